# The meshd image: the single binary `deno task compile` builds (dist/meshd), on Debian
# bookworm with libbpf, which the eBPF fast path loads at run time.
#
#   deno task compile            # needs Deno's download servers (it fetches denort)
#   docker build -t meshd:0.1.0 .
#
# scripts/kind-up does both, with the tag from deno.json's version.
FROM debian:bookworm-slim

# libbpf1: libbpf.so.1 for the eBPF fast path (meshd runs on the userspace proxy without it).
# ca-certificates: https backends whose certificates chain to a public CA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY dist/meshd /usr/local/bin/meshd

# One glibc malloc arena: the arenas of other threads otherwise keep memory no thread uses
# (8-12 MiB at 1,000 services; README, Memory). glibc reads it only at start.
ENV MALLOC_ARENA_MAX=1

# Root inside the container, with every capability dropped but the few the DaemonSet adds
# back (see manifests/daemonset.yaml): attaching cgroup programs needs them, and Kubernetes
# gives added capabilities to root only.
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["run", "--provider=kube"]
