#!/usr/bin/env python3
"""A saegrid client built from the .proto files alone: generates Python stubs with protoc and
grpc_python_plugin, then submits, reads, lists and watches a job, and checks error codes.

usage: python_client_check.py SOURCE_DIR COORDINATOR TOKEN OUT_DIR
"""
import os
import subprocess
import sys

source, address, token, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
protos = [f"saegrid/v1/{name}.proto" for name in ("job_spec", "job", "job_service", "worker_service")]
subprocess.run(["protoc", f"-I{source}/proto", "-I/usr/include", f"--python_out={out}", f"--grpc_python_out={out}",
                "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin", *protos], check=True)
sys.path.insert(0, out)

import grpc  # noqa: E402
from saegrid.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, job_spec_pb2  # noqa: E402

metadata = [("authorization", f"Bearer {token}")]
stub = job_service_pb2_grpc.JobServiceStub(grpc.insecure_channel(address))

spec = job_spec_pb2.JobSpec(name="from-python")
spec.training.total_tokens = 4096
spec.data.synthetic.d = 32
spec.model.num_latents = 128
spec.labels["client"] = "python"

try:
    stub.SubmitJob(job_service_pb2.SubmitJobRequest(request_id="py-bad", spec=job_spec_pb2.JobSpec()),
                   metadata=metadata)
    sys.exit("an empty spec was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print("empty spec:", e.details())

try:
    stub.GetJob(job_service_pb2.GetJobRequest(job_id="job-424242"), metadata=metadata)
    sys.exit("an unknown job was found")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e

try:
    stub.ListJobs(job_service_pb2.ListJobsRequest())
    sys.exit("a call without a token was served")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e

submitted = stub.SubmitJob(job_service_pb2.SubmitJobRequest(request_id="py-1", spec=spec), metadata=metadata)
assert submitted.created
job_id = submitted.job.job_id
again = stub.SubmitJob(job_service_pb2.SubmitJobRequest(request_id="py-1", spec=spec), metadata=metadata)
assert not again.created and again.job.job_id == job_id

job = stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=metadata)
assert job.state == job_pb2.JOB_STATE_PENDING, job.state
assert job.spec.labels["client"] == "python"

listed = stub.ListJobs(job_service_pb2.ListJobsRequest(labels={"client": "python"}), metadata=metadata)
assert [j.job_id for j in listed.jobs] == [job_id]

watch = stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), metadata=metadata, timeout=10)
first = next(watch)
assert first.job.job_id == job_id and first.revision == job.revision
watch.cancel()

cancelled = stub.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id), metadata=metadata)
assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
print("python client: ok", job_id)
