"""Benchmark (not a test): speculative decoding by prompt lookup on a code edit, served.

    .venv/bin/python bench/bench_speculative.py [--model qwen2.5-coder-0.5b] [--repeat 3]

Through a real `pollama serve`, /api/chat asks the model to repeat a function of about 300
tokens with one identifier renamed (greedy), once with drafting off (`draft_num_predict` 0)
and once with the default, alternating; prints the decode rates (eval_count / eval_duration),
the drafts proposed and accepted, and whether the two answers are the same text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from bench_served import Server  # noqa: E402

FUNCTION = '''def summarize_orders(orders, tax_rate=0.2, currency="EUR"):
    """Total, tax and the largest order per customer, from (customer, amount, paid) rows."""
    totals = {}
    largest = {}
    unpaid = []
    for customer, amount, paid in orders:
        if amount < 0:
            raise ValueError(f"negative amount {amount} for {customer}")
        totals[customer] = totals.get(customer, 0.0) + amount
        if amount > largest.get(customer, 0.0):
            largest[customer] = amount
        if not paid:
            unpaid.append((customer, amount))
    report = []
    for customer in sorted(totals):
        net = totals[customer]
        tax = round(net * tax_rate, 2)
        report.append({
            "customer": customer,
            "net": f"{net:.2f} {currency}",
            "tax": f"{tax:.2f} {currency}",
            "gross": f"{net + tax:.2f} {currency}",
            "largest": f"{largest[customer]:.2f} {currency}",
        })
    unpaid.sort(key=lambda row: row[1], reverse=True)
    return report, unpaid
'''

PROMPT = ("Rename the variable `totals` to `net_by_customer` in this function and output the whole "
          f"function, nothing else:\n\n```python\n{FUNCTION}```")


def chat(base: str, model: str, draft: int | None) -> dict:
    options = {"temperature": 0, "num_predict": 600}
    if draft is not None:
        options["draft_num_predict"] = draft
    reply = httpx.post(base + "/api/chat", json={
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": False, "options": options,
    }, timeout=600)
    reply.raise_for_status()
    return reply.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from pollama.cli.main import resolve_model

    path = str(resolve_model(args.model))
    runs = {"plain": [], "drafted": []}
    with Server("pollama", path, args.threads) as server:
        chat(server.base, args.model, 0)  # load, and page in the weights
        for _ in range(args.repeat):
            runs["plain"].append(chat(server.base, args.model, 0))
            runs["drafted"].append(chat(server.base, args.model, None))
    rate = {k: statistics.median(r["eval_count"] / r["eval_duration"] * 1e9 for r in v) for k, v in runs.items()}
    last = runs["drafted"][-1]
    same = all(d["message"]["content"] == p["message"]["content"] for d, p in zip(runs["drafted"], runs["plain"]))
    print(f"{args.model}: code edit, {runs['plain'][0]['eval_count']} tokens, {args.threads} threads, median of {args.repeat}")
    print(f"plain decoding   {rate['plain']:6.1f} tok/s")
    print(f"prompt lookup    {rate['drafted']:6.1f} tok/s   ({rate['drafted'] / rate['plain']:.2f}x; "
          f"{last.get('draft_accepted_count')} of {last.get('draft_count')} drafts accepted)")
    print(f"same answer: {same}")


if __name__ == "__main__":
    main()
