#!/usr/bin/env python3
"""An Arbiter participant in Python, built from the .proto files alone.

It generates its gRPC code from proto/arbiter/v1/participant.proto at start-up
(grpcio-tools), serves TwoPhaseParticipant and TccParticipant on 127.0.0.1:PORT,
and appends every call it receives to LOG as a tab-separated line:
    call  txn_id  branch_id  resource  attempt

Payload "no:<reason>" votes NO, "reject" answers FAILED_PRECONDITION,
"result:<text>" votes YES with the result "<text>" and acknowledges a
commit/confirm with "done:<text>", "huge-ack" acknowledges with a result over
the coordinator's 4 KiB limit, anything else votes YES. It prints "ready"
once it is serving.

    python3 participant.py --port 9001 --log calls.tsv --proto-dir ../../proto
"""
import argparse
import sys
import tempfile
import threading
from concurrent import futures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--proto-dir", required=True)
    args = parser.parse_args()

    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="arbiter-py-")
    rc = protoc.main([
        "protoc",
        f"-I{args.proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "arbiter/v1/participant.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)

    import grpc
    from arbiter.v1 import participant_pb2 as pb
    from arbiter.v1 import participant_pb2_grpc as rpc

    lock = threading.Lock()

    def record(call, req):
        with lock, open(args.log, "a") as log:
            log.write(f"{call}\t{req.txn_id}\t{req.branch_id}\t{req.resource}\t{req.attempt}\n")

    def vote(call, req, ctx):
        record(call, req)
        payload = req.payload.decode("utf-8", "replace")
        if payload.startswith("no:"):
            return pb.Vote(vote=pb.VOTE_NO, reason=payload[3:])
        if payload == "reject":
            ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "rejected by the python participant")
        if payload.startswith("result:"):
            return pb.Vote(vote=pb.VOTE_YES, result=payload[7:].encode())
        return pb.Vote(vote=pb.VOTE_YES)

    def ack(call, req):
        record(call, req)
        payload = req.payload.decode("utf-8", "replace")
        if call in ("commit", "confirm") and payload.startswith("result:"):
            return pb.Ack(result=("done:" + payload[7:]).encode())
        if call in ("commit", "confirm") and payload == "huge-ack":
            return pb.Ack(result=b"x" * 5000)
        return pb.Ack()

    class TwoPhase(rpc.TwoPhaseParticipantServicer):
        def Prepare(self, req, ctx):
            return vote("prepare", req, ctx)

        def Commit(self, req, ctx):
            return ack("commit", req)

        def Rollback(self, req, ctx):
            return ack("rollback", req)

    class Tcc(rpc.TccParticipantServicer):
        def Try(self, req, ctx):
            return vote("try", req, ctx)

        def Confirm(self, req, ctx):
            return ack("confirm", req)

        def Cancel(self, req, ctx):
            return ack("cancel", req)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_TwoPhaseParticipantServicer_to_server(TwoPhase(), server)
    rpc.add_TccParticipantServicer_to_server(Tcc(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
