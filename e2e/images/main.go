// Command imagebuild builds and serves the local cluster's images without a Docker
// daemon, and generates the application images' Dockerfiles from the same definitions
// (images.go).
//
//	imagebuild dockerfiles --repo DIR [--check]   write (or check) the Dockerfiles
//	imagebuild push --registry HOST:PORT --repo DIR --build DIR --assets DIR --node DIR --base ROOTFS
//	                                              build every image and push it; prints the application tag
//	imagebuild serve --addr HOST:PORT --dir DIR    an OCI registry (blobs on disk); prints "listening on ADDR"
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: imagebuild dockerfiles|push|serve [flags]"))
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "dockerfiles":
		err = dockerfiles(args)
	case "push":
		err = push(args)
	case "serve":
		err = serve(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "imagebuild:", err)
	os.Exit(1)
}

func dockerfiles(args []string) error {
	fs := flag.NewFlagSet("dockerfiles", flag.ExitOnError)
	repo := fs.String("repo", ".", "the repository's root")
	check := fs.Bool("check", false, "only check that the checked-in Dockerfiles are current")
	_ = fs.Parse(args)
	stale := 0
	for _, img := range images {
		if img.Dockerfile == "" {
			continue
		}
		path := filepath.Join(*repo, img.Dockerfile)
		want := []byte(dockerfile(img))
		if *check {
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
				fmt.Fprintf(os.Stderr, "%s is stale; regenerate it with `imagebuild dockerfiles`\n", img.Dockerfile)
				stale++
			}
			continue
		}
		if err := os.WriteFile(path, want, 0o644); err != nil {
			return err
		}
	}
	if stale > 0 {
		return fmt.Errorf("%d Dockerfile(s) differ from e2e/images/images.go", stale)
	}
	return nil
}

func push(args []string) error {
	fs := flag.NewFlagSet("push", flag.ExitOnError)
	reg := fs.String("registry", "", "HOST:PORT of the registry")
	var roots Roots
	fs.StringVar(&roots.Repo, "repo", ".", "the repository's root")
	fs.StringVar(&roots.Build, "build", "", "the release build's output (target/release)")
	fs.StringVar(&roots.Assets, "assets", "", "the assets scripts/setup.sh installs")
	fs.StringVar(&roots.Node, "node", "", "the node binaries e2e/build.sh built")
	base := fs.String("base", "", "the runtime base's root filesystem (e2e/images/base.sh)")
	_ = fs.Parse(args)
	if *reg == "" || roots.Build == "" || roots.Assets == "" || roots.Node == "" || *base == "" {
		return fmt.Errorf("push needs --registry, --build, --assets, --node and --base")
	}
	tag, err := pushAll(*reg, roots, *base, os.Stderr)
	if err != nil {
		return err
	}
	fmt.Println(tag)
	return nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "where to listen (loopback only)")
	dir := fs.String("dir", "", "where blobs are kept")
	_ = fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("serve needs --dir")
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("the registry listens on loopback only, not %s", host)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", l.Addr())
	return http.Serve(l, registry.New(registry.WithBlobHandler(registry.NewDiskBlobHandler(*dir))))
}
