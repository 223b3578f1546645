"""Broker memory and file descriptors with many partitions: creates one topic of N partitions
on a running broker (pid PID), then produces RECORDS_PER_PART records (default 100) of 1 KiB
to each of the first PRODUCE_PARTS partitions (default 1,000) with confluent-kafka, printing
the broker's RSS and open files after each step, and the produce throughput.

    python3 benches/many-partitions.py BOOTSTRAP PID N
"""
import sys, time, subprocess, os
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import Producer
bootstrap, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"): return line.split()[1] + " kB"
def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))
print("start rss", rss(), "fds", fds(), flush=True)
admin = AdminClient({"bootstrap.servers": bootstrap})
t0=time.time()
admin.create_topics([NewTopic("many", n, 1)])["many"].result(timeout=600)
print(f"created {n} partitions in {time.time()-t0:.1f}s rss", rss(), "fds", fds(), flush=True)
time.sleep(2)
print("idle rss", rss(), "fds", fds(), flush=True)
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "queue.buffering.max.messages": 2000000})
t0=time.time()
count = 0
for i in range(min(n, int(os.environ.get('PRODUCE_PARTS','1000')))):
    for j in range(int(os.environ.get("RECORDS_PER_PART", "100"))):
        p.produce("many", value=b"x"*1024, partition=i)
        count += 1
    p.poll(0)
p.flush(120)
dt=time.time()-t0
print(f"produced {count} records to {min(n,int(os.environ.get('PRODUCE_PARTS','1000')))} partitions in {dt:.1f}s ({count*1024/dt/1e6:.1f} MB/s) rss", rss(), "fds", fds(), flush=True)
time.sleep(3)
print("after rss", rss(), "fds", fds(), flush=True)
