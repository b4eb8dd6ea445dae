"""One of the concurrent writers of test_concurrent_upserts (run as a script; imports only httpx).

    python upsert_worker.py URL TOKEN WORKER N_SHARED N_OWN

Writes N_SHARED identities every worker also writes (median depends on the worker) and
N_OWN identities only it writes, in shuffled batches of 25.
"""
import random
import sys

import httpx

FP = {"vendor": "test", "device_name": "concurrency", "compute_capability": "9.0", "sm_count": 132,
      "triton_version": "3.0", "torch_version": "2.5"}


def median(worker: int, i: int) -> float:
    return 1.0 + ((worker * 7 + i * 3) % 11) / 10.0


def main() -> None:
    url, token, worker, n_shared, n_own = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    recs = []
    for i in range(n_shared):
        recs.append((f"[{i},\"shared\"]", median(worker, i)))
    for i in range(n_own):
        recs.append((f"[{i},\"w{worker}\"]", 1.0))
    random.Random(worker).shuffle(recs)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as c:
        for start in range(0, len(recs), 25):
            body = {"records": [
                {"kernel": "conc", "kernel_hash": "h", "key": k, "fingerprint": FP, "config": {"BLOCK": 64, "w": worker},
                 "median_ms": m, "p20_ms": m, "p80_ms": m, "configs_tried": 4, "host": f"w{worker}"}
                for k, m in recs[start:start + 25]
            ]}
            r = c.post("/v1/records", json=body)
            r.raise_for_status()


if __name__ == "__main__":
    main()
