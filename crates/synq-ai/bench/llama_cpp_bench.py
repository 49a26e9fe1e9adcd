"""The same measurement as `ai-bench`, with llama.cpp (the llama-cpp-python package), for
comparison: one JSON line with load_s, prompt_tokens, ttft_ms, tokens, tokens_per_s, threads.

    pip install llama-cpp-python   # compiles llama.cpp for this CPU
    python3 llama_cpp_bench.py --model FILE.gguf --max-tokens 128 --threads 2
"""
import argparse
import json
import time

from llama_cpp import Llama

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--prompt", default="Write a short story about a robot who learns to paint.")
parser.add_argument("--max-tokens", type=int, default=128)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

started = time.perf_counter()
llm = Llama(model_path=args.model, n_threads=args.threads, n_ctx=4096, verbose=False)
load_s = time.perf_counter() - started
messages = [{"role": "user", "content": args.prompt}]


def run(max_tokens):
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
    return first - started, tokens, end - first


cold_ttft, _, _ = run(1)
llm.reset()  # no prompt cache: read the prompt again, as ai-bench does
ttft, tokens, decode = run(args.max_tokens)
print(
    json.dumps(
        {
            "engine": "llama.cpp (llama-cpp-python)",
            "model": args.model.rsplit("/", 1)[-1],
            "load_s": round(load_s, 3),
            "cold_ttft_ms": round(cold_ttft * 1000, 1),
            "ttft_ms": round(ttft * 1000, 1),
            "tokens": tokens,
            "tokens_per_s": round((tokens - 1) / decode, 2) if tokens > 1 else 0.0,
            "threads": args.threads,
        }
    )
)
