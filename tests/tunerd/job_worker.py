"""One worker of test_claims_exactly_once (run as a script; imports only tuner.jobs).

    python job_worker.py URL TOKEN DEVICE_NAME N_JOBS GO_FILE [--die]

Submits the same N_JOBS jobs as every other worker, prints ``ready``, waits for GO_FILE,
then works through the queue with tuner.jobs.work: each job sleeps briefly and uploads
one record. Prints ``submitted N``, ``claim ID`` and ``finish ID ACCEPTED`` lines.
With --die it stops after its first claim (printing ``claim ID``) and waits to be killed.
"""
import os
import sys
import time

from tuner.fingerprint import Fingerprint
from tuner.jobs import JobClient, JobResult, work


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    url, token, device, n_jobs, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    die = "--die" in sys.argv[6:]
    fp = Fingerprint("test", device, "9.0", 132, "3.0", "2.5")
    client = JobClient(url, token, backoff_s=(0.2, 0.5, 1.0))
    specs = [{"op": "linear", "shapes": [[i + 1, 8], [8, 8]], "dtype": "float32"} for i in range(n_jobs)]
    say(f"submitted {client.submit(fp, specs)['submitted']}")
    say("ready")
    while not os.path.exists(go):
        time.sleep(0.01)
    name = f"w{os.getpid()}"

    def run(spec: dict) -> JobResult:
        if die:
            time.sleep(3600)  # killed here, holding the job
        time.sleep(0.05)
        m = spec["shapes"][0][0]
        rec = {"kernel": "jobs_conc", "kernel_hash": "h", "key": f"[{m}]", "fingerprint": fp.as_dict(),
               "config": {"BLOCK": 16}, "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "configs_tried": 1,
               "host": name}
        return JobResult(ok=True, records=[rec])

    work(client, fp, name, run,
         on_claim=lambda job: say(f"claim {job['id']}"),
         on_finish=lambda job, result, accepted: say(f"finish {job['id']} {int(accepted)}"))
    say("exit")


if __name__ == "__main__":
    main()
