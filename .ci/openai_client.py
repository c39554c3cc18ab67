"""The official `openai` Python package against the bundled service, unchanged.

Run by .ci/run (which installs the package); standalone:
    python3 .ci/openai_client.py path/to/target/debug/examples/service
Starts the service on a free port, talks to it through the client library (plain, streaming,
errors, auth), and stops it with SIGTERM, expecting exit status 0.
"""

import os
import signal
import subprocess
import sys

import openai
from openai import OpenAI


def start(binary, extra_env=None):
    env = dict(os.environ)
    for name in ("OPENAI_API_KEY", "REDIS_URL", "DATABASE_URL", "AGENTKIT_API_KEYS", "AGENTKIT_JWT_SECRET"):
        env.pop(name, None)
    env["AGENTKIT_ADDR"] = "127.0.0.1:0"
    env.update(extra_env or {})
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, text=True)
    # JSON log lines may come first; the address line is plain text.
    for _ in range(100):
        line = proc.stdout.readline().strip()
        if line.startswith("listening on "):
            break
    else:
        raise AssertionError("the service did not print its address")
    # Keep reading stdout so the service never blocks on a full pipe.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, line[len("listening on "):]


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=15)
    assert code == 0, f"the service exited with {code}"


def check_open_service(binary):
    proc, base = start(binary)
    try:
        client = OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)

        models = [m.id for m in client.models.list()]
        assert "assistant" in models, models

        reply = client.chat.completions.create(
            model="assistant",
            messages=[{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 17 + 25?"}],
        )
        assert reply.choices[0].message.content == "17 + 25 = 42", reply
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0

        stream = client.chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "What is 17 + 25?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage, finish = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert text == "17 + 25 = 42", text
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens > 0

        try:
            client.chat.completions.create(model="no-such-agent", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("an unknown model must fail")
        except openai.NotFoundError as error:
            assert error.status_code == 404
    finally:
        stop(proc)


def check_authenticated_service(binary):
    proc, base = start(binary, {"AGENTKIT_API_KEYS": "acme:dummy-key-for-ci"})
    try:
        good = OpenAI(base_url=f"{base}/v1", api_key="dummy-key-for-ci", max_retries=0)
        reply = good.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "What is 2 + 3?"}])
        assert reply.choices[0].message.content == "2 + 3 = 5"
        bad = OpenAI(base_url=f"{base}/v1", api_key="wrong-key", max_retries=0)
        try:
            bad.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("a wrong key must fail")
        except openai.AuthenticationError as error:
            assert error.status_code == 401
    finally:
        stop(proc)


def main():
    binary = sys.argv[1]
    check_open_service(binary)
    check_authenticated_service(binary)
    print(f"openai {openai.__version__}: plain, streaming, errors and auth all work against the service")


if __name__ == "__main__":
    main()
