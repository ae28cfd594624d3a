"""Measurement (not a test): is a greedy answer the same whether part of its prompt was cached?

    .venv/bin/python bench/bench_cached_prefix.py smollm2|qwen2.5-coder-0.5b|gemma3-270m

Six chat prompts, each answered (48 tokens, greedy, no drafting) twice on one slot: once
after a prompt that leaves part of it in the cache, once after an unrelated one (evaluated
whole). (a) "prompt-prefix": the cached part is the system prompt, evaluated as a prompt
before; (b) "answer-prefix": a next turn whose cached part includes the previous answer,
generated one token per step. Prints (tokens cached, same answer?) for each.
"""
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from realmodels import real_model
from pollama.runner.parallel import ParallelEngine
from pollama.runner.generation import GenerateOptions
from pollama.sample import SamplerOptions
G = SamplerOptions(temperature=0.0, repeat_penalty=1.0)
name = sys.argv[1]
N = 48
def run(pe, p, n=N):
    return list(pe.submit(p, GenerateOptions(sampler=G, num_predict=n, draft_num_predict=0)))[-1]
with ParallelEngine(real_model(name), num_ctx=2048, num_parallel=1) as pe:
    tok = pe.tokenizer
    base = "<|im_start|>system\nYou are a helpful assistant who writes vivid, detailed short stories.<|im_end|>\n"
    res = {"prompt-prefix": [], "answer-prefix": []}
    for follow in ["Write about a lighthouse keeper.", "What was in the message?", "Make it sad.", "Translate the first line to French.", "Tell a joke about cats.", "Explain photosynthesis simply."]:
        p1 = tok.encode(base + f"<|im_start|>user\n{follow}<|im_end|>\n<|im_start|>assistant\n")
        # (a) prefix evaluated as a prompt: the system prompt alone, then the full prompt
        run(pe, tok.encode(base), 1)
        a = run(pe, p1)
        run(pe, tok.encode("Hello"), 1)
        b = run(pe, p1)
        res["prompt-prefix"].append((a.prompt_cached, a.tokens == b.tokens))
        # (b) the previous answer cached (a chat's next turn)
        p2 = a.tokens + tok.encode("<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n", add_special=False)
        c = run(pe, p2)
        run(pe, tok.encode("Hello"), 1)
        d = run(pe, p2)
        res["answer-prefix"].append((c.prompt_cached, c.tokens == d.tokens))
    print(name, res)
