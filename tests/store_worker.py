"""Run as a subprocess by tests/test_store.py: writes to a Store the way the app does.

    python tests/store_worker.py stream DB RATE   # streams a reply forever (to be SIGKILLed)
    python tests/store_worker.py batch DB N       # a batch run of N items
    python tests/store_worker.py chat DB N        # N chat turns with streamed, flushed replies
"""
from __future__ import annotations

import sys
import time

from assistant.store import Store


def stream(db: str, rate: float) -> None:
    st = Store(db)
    sid = st.new_session("chat", "worker-model")
    st.add_message(sid, "user", "a question about zebras")
    writer = st.start_reply(sid, "worker-model", {"temperature": 0})
    print("ready", sid, flush=True)
    i = 0
    while True:
        writer.append(f"t{i:05d} ")
        # Printed after append() returns, i.e. after any flush it triggered has committed.
        print(i, repr(time.time()), flush=True)
        i += 1
        time.sleep(1.0 / rate)


def batch(db: str, n: int) -> None:
    st = Store(db)
    sid, run_id = st.start_batch("summarize", "visits.jsonl", "summaries.jsonl", "worker-model")
    for i in range(n):
        st.add_batch_item(sid, f"batch input {i}", f"batch output {i}", model="worker-model",
                          stats={"prompt_tokens": 3, "completion_tokens": 3, "ttft_s": 0.01, "total_s": 0.02})
    st.finish_batch(run_id, {"items": n, "ok": n, "failed": 0}, "complete")
    print(sid, flush=True)


def chat(db: str, n: int) -> None:
    st = Store(db)
    sid = st.new_session("chat", "worker-model")
    for i in range(n):
        st.add_message(sid, "user", f"chat question {i}")
        writer = st.start_reply(sid, "worker-model", {"temperature": 0})
        for j in range(5):
            writer.append(f"chat answer {i} part {j} ")
            writer.flush()
        writer.finish({"prompt_tokens": 4, "completion_tokens": 5, "ttft_s": 0.01, "total_s": 0.05,
                       "finish_reason": "stop"})
    print(sid, flush=True)


if __name__ == "__main__":
    mode, db, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    {"stream": lambda: stream(db, float(arg)), "batch": lambda: batch(db, int(arg)),
     "chat": lambda: chat(db, int(arg))}[mode]()
