//! Quickstart: an agent with a tool, answering one question.
//!
//!     cargo run --example quickstart
//!
//! Offline by default: the scripted model calls the `add` tool for `17 + 25` and answers with the
//! sum. With `OPENAI_API_KEY` set (and optionally `OPENAI_BASE_URL`, `AGENTKIT_MODEL`) the same
//! program talks to a real OpenAI-compatible server instead. It prints the answer, the tool
//! calls, the tokens and the cost, and exits 0.

use std::process::ExitCode;

use agentkit::{Context, Executor, Invocation, Price};
use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> agentkit::Result<()> {
    let model = agentkit::demo::model_from_env()?;
    println!("model: {} ({})", model.id(), model.provider());
    let agent = agentkit::demo::assistant_builder(model)
        // Price the scripted model like gpt-4o-mini, so cost accounting shows real numbers.
        .price("scripted", Price::per_million(0.15, 0.60))
        .max_steps(5)
        .build()?;

    let question = "What is 17 + 25?";
    let cx = Context::new().with_timeout(std::time::Duration::from_secs(60));
    let reply = agent
        .execute(Invocation::text(question).with_context(cx))
        .await?;

    println!("question: {question}");
    println!("answer: {}", reply.output);
    for call in &reply.tool_calls {
        println!(
            "tool call: {}({}) ok={} in {:.3} ms",
            call.name,
            call.arguments,
            call.ok,
            call.duration.as_secs_f64() * 1000.0
        );
    }
    println!(
        "usage: {} input + {} output tokens over {} model calls",
        reply.usage.input_tokens, reply.usage.output_tokens, reply.steps
    );
    println!("cost: ${:.8}", reply.cost_usd);

    // The same question, streamed: events arrive as they happen.
    print!("streamed:");
    let mut events = agent.stream(Invocation::text(question)).await?;
    while let Some(event) = events.next().await {
        match event? {
            agentkit::AgentEvent::TextDelta { text } => print!(" {text:?}"),
            other => print!(" [{}]", other.name()),
        }
    }
    println!();
    Ok(())
}
