#!/usr/bin/env python3
"""Top functions of a Go pprof CPU profile (`profile.pb.gz`), without Go's tools: the NATS
server on this machine is a stripped binary, but its own profiler (`--profile PORT`) names
functions. Usage: pprof_top.py PROFILE [flat|cum] [N]. Used by benches/nats_server_profile.sh.
Decodes just the parts of profile.proto it needs: samples, locations, functions, strings."""
import gzip, sys, collections
def varint(b, i):
    r=0; s=0
    while True:
        x=b[i]; i+=1; r|=(x&0x7f)<<s; s+=7
        if x<0x80: return r,i
def fields(b):
    i=0; n=len(b)
    while i<n:
        k,i=varint(b,i); f=k>>3; t=k&7
        if t==0: v,i=varint(b,i); yield f,t,v
        elif t==2:
            l,i=varint(b,i); yield f,t,b[i:i+l]; i+=l
        elif t==1: yield f,t,b[i:i+8]; i+=8
        elif t==5: yield f,t,b[i:i+4]; i+=4
        else: raise Exception(t)
def packed(v):
    out=[]; i=0
    while i<len(v):
        x,i=varint(v,i); out.append(x)
    return out
def load(path):
    b=gzip.decompress(open(path,'rb').read())
    samples=[]; locs={}; funcs={}; strings=[]
    for f,t,v in fields(b):
        if f==2:
            ids=[];vals=[]
            for f2,t2,v2 in fields(v):
                if f2==1: ids+= packed(v2) if t2==2 else [v2]
                if f2==2: vals+= packed(v2) if t2==2 else [v2]
            samples.append((ids,vals))
        elif f==4:
            lid=None; fnids=[]
            for f2,t2,v2 in fields(v):
                if f2==1: lid=v2
                if f2==4:
                    for f3,t3,v3 in fields(v2):
                        if f3==1: fnids.append(v3)
            locs[lid]=fnids
        elif f==5:
            fid=None; name=None
            for f2,t2,v2 in fields(v):
                if f2==1: fid=v2
                if f2==2: name=v2
            funcs[fid]=name
        elif f==6: strings.append(v.decode('utf-8','replace'))
    fname=lambda fid: strings[funcs[fid]] if fid in funcs else '?'
    flat=collections.Counter(); cum=collections.Counter(); total=0
    for ids,vals in samples:
        v=vals[-1]; total+=v
        if not ids: continue
        leaf=locs.get(ids[0],[])
        if leaf: flat[fname(leaf[0])]+=v
        seen=set()
        for lid in ids:
            for fid in locs.get(lid,[]):
                n=fname(fid)
                if n not in seen: seen.add(n); cum[n]+=v
    return flat,cum,total
flat,cum,total=load(sys.argv[1])
mode=sys.argv[2] if len(sys.argv)>2 else 'flat'
c=flat if mode=='flat' else cum
print("total", total/1e9, "s")
for n,v in c.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 30):
    print(f"{100*v/total:6.2f}% {n}")
