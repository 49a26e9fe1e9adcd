"""The same measurements as `ai-bench`, with llama.cpp (the llama-cpp-python package), for
comparison: one JSON line per run.

    pip install llama-cpp-python   # compiles llama.cpp for this CPU
    python3 llama_cpp_bench.py --model FILE.gguf --max-tokens 128 --threads 2
    # the follow-up turn of a chat room, with the prompts ai-bench uses:
    ai-bench --model FILE.gguf --scenario follow-up --dump-messages /tmp/room.json ...
    python3 llama_cpp_bench.py --model FILE.gguf --threads 2 --messages /tmp/room.json

`single`: the prompt read from scratch (`llm.reset()`), as ai-bench's `single` does.
`follow-up` (with --messages): the room's previous request is answered, then the measured
request reuses llama.cpp's KV state of it (llama-cpp-python keeps the previous prompt's
tokens and continues from the longest common prefix: its built-in prompt cache);
`cold_ttft_ms` is the same request after `llm.reset()`.
"""
import argparse
import json
import os
import time

from llama_cpp import Llama

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--prompt", default="Write a short story about a robot who learns to paint.")
parser.add_argument("--max-tokens", type=int, default=128)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--messages", help="ai-bench --dump-messages output: the follow-up scenario")
args = parser.parse_args()

started = time.perf_counter()
llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
            n_ctx=4096, verbose=False)
load_s = time.perf_counter() - started


def run(messages, max_tokens):
    started = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(
        messages, max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    if first is None:
        first = end
    return first - started, tokens, end - first


line = {
    "engine": "llama.cpp (llama-cpp-python)",
    "model": os.path.basename(args.model),
    "load_s": round(load_s, 3),
    "threads": args.threads,
    "gguf_mb": round(os.path.getsize(args.model) / 1e6, 1),
}
if args.messages:
    with open(args.messages) as f:
        room = json.load(f)
    first_ttft, _, _ = run(room["first"], 48)
    ttft, tokens, decode = run(room["follow_up"], args.max_tokens)
    llm.reset()
    cold_ttft, _, _ = run(room["follow_up"], 1)
    line.update(
        scenario="follow-up",
        first_ttft_ms=round(first_ttft * 1000, 1),
        ttft_ms=round(ttft * 1000, 1),
        cold_ttft_ms=round(cold_ttft * 1000, 1),
    )
else:
    messages = [{"role": "user", "content": args.prompt}]
    cold_ttft, _, _ = run(messages, 1)
    llm.reset()  # no prompt cache: read the prompt again, as ai-bench does
    ttft, tokens, decode = run(messages, args.max_tokens)
    line.update(
        scenario="single",
        ttft_ms=round(ttft * 1000, 1),
        cold_ttft_ms=round(cold_ttft * 1000, 1),
    )
line.update(
    tokens=tokens,
    tokens_per_s=round((tokens - 1) / decode, 2) if tokens > 1 and decode > 0 else 0.0,
)
try:
    with open("/proc/self/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                line["rss_mb"] = round(int(l.split()[1]) / 1000, 1)
except OSError:
    pass
print(json.dumps(line))
