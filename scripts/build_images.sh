#!/usr/bin/env bash
# Build the images the DAG launches, skipping any whose inputs have not changed.
#
#   scripts/build_images.sh trainer-cpu     simia/trainer:cpu  FROM $SIMIA_BASE_IMAGE
#   scripts/build_images.sh trainer-cuda    simia/trainer:cuda (needs a registry for the
#                                           CUDA base image; run it on the GPU host)
#   scripts/build_images.sh evaluator-cpu   simia/evaluator:cpu (the CI evaluator) FROM
#                                           simia/trainer:cpu, built first if needed
#   scripts/build_images.sh evaluator-tau2  simia/evaluator:tau2 (tau2-bench v1.0.1; needs
#                                           a registry and GitHub: run it on the GPU host)
#
# Each image carries a label `simia.inputs` = sha256 of the files that define it; a run
# with the same inputs returns at once. The CPU build puts torch's CPU wheel (pip's
# find-links on the project's machines, or the registry elsewhere) in .build/wheels.
# Environment: SIMIA_BASE_IMAGE (default local/debian:bookworm), SIMIA_TRAINER_CPU_IMAGE,
#              SIMIA_TRAINER_IMAGE, SIMIA_EVALUATOR_CPU_IMAGE, SIMIA_EVALUATOR_IMAGE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
log() { echo "[build_images $((SECONDS - start))s] $*" >&2; }

inputs_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
current_label() {
    docker image inspect --format '{{ index .Config.Labels "simia.inputs" }}' "$1" 2>/dev/null || true
}

build() {  # build TAG DOCKERFILE HASH [docker build args...]
    local tag=$1 dockerfile=$2 hash=$3
    shift 3
    if [[ "$(current_label "$tag")" == "$hash" ]]; then
        log "$tag is up to date"
        return 0
    fi
    log "building $tag from $dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -f "$dockerfile" --label "simia.inputs=$hash" \
        -t "$tag" "$@" . >/dev/null
    log "built $tag"
}

target=${1:-trainer-cpu}
lf_inputs=(requirements-llamafactory.txt constraints-llamafactory.txt scripts/make_lf_env.sh)
case "$target" in
    evaluator-cpu)
        "$0" trainer-cpu
        trainer=${SIMIA_TRAINER_CPU_IMAGE:-simia/trainer:cpu}
        tag=${SIMIA_EVALUATOR_CPU_IMAGE:-simia/evaluator:cpu}
        trainer_id=$(docker image inspect --format '{{.Id}}' "$trainer")
        hash=$( (inputs_hash docker/evaluator/Dockerfile.cpu;
                 find include/simia -name '*.py' -o -name '*.json' -o -name '*.txt' \
                   | LC_ALL=C sort | xargs cat; echo "$trainer_id") | sha256sum | cut -d' ' -f1)
        build "$tag" docker/evaluator/Dockerfile.cpu "$hash" --build-arg "TRAINER_IMAGE=$trainer"
        ;;
    evaluator-tau2)
        tag=${SIMIA_EVALUATOR_IMAGE:-simia/evaluator:tau2}
        hash=$(inputs_hash docker/evaluator/Dockerfile docker/evaluator/constraints-tau2.txt)
        build "$tag" docker/evaluator/Dockerfile "$hash"
        ;;
    trainer-cpu)
        base=${SIMIA_BASE_IMAGE:-local/debian:bookworm}
        tag=${SIMIA_TRAINER_CPU_IMAGE:-simia/trainer:cpu}
        if ! docker image inspect "$base" >/dev/null 2>&1; then
            echo "build_images: base image $base is missing; run scripts/docker_engine.sh" >&2
            exit 1
        fi
        mkdir -p .build/wheels
        if ! compgen -G ".build/wheels/torch-2.13.0*.whl" >/dev/null; then
            log "fetching torch 2.13.0 (CPU build) into .build/wheels"
            python3 -m pip download -q --no-deps --only-binary :all: torch==2.13.0 -d .build/wheels
        fi
        case "$(ls .build/wheels/torch-2.13.0*.whl)" in
            *+cpu*) ;;
            *) echo "build_images: .build/wheels holds a non-CPU torch wheel;" \
                    "put torch-2.13.0+cpu there" >&2; exit 1 ;;
        esac
        base_id=$(docker image inspect --format '{{.Id}}' "$base")
        hash=$( (inputs_hash docker/trainer/Dockerfile.cpu "${lf_inputs[@]}"; echo "$base_id";
                 ls .build/wheels) | sha256sum | cut -d' ' -f1)
        build "$tag" docker/trainer/Dockerfile.cpu "$hash" --build-arg "BASE_IMAGE=$base"
        ;;
    trainer-cuda)
        tag=${SIMIA_TRAINER_IMAGE:-simia/trainer:cuda}
        hash=$(inputs_hash docker/trainer/Dockerfile "${lf_inputs[@]}")
        build "$tag" docker/trainer/Dockerfile "$hash"
        ;;
    *)
        echo "usage: $0 trainer-cpu|trainer-cuda|evaluator-cpu|evaluator-tau2" >&2
        exit 2
        ;;
esac
