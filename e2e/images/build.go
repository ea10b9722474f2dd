package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Roots are where each Source lives on this machine.
type Roots struct {
	Build, Repo, Assets, Node string
}

func (r Roots) of(s Source) string {
	switch s {
	case Build:
		return r.Build
	case Repo:
		return r.Repo
	case Assets:
		return r.Assets
	default:
		return r.Node
	}
}

// The PATH of distroless images.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// One entry of a layer: a directory, a regular file copied from src, or a symlink.
type entry struct {
	dst  string // absolute path in the image
	src  string // host file for regular files
	mode fs.FileMode
	link string
	uid  int
}

// epoch is every entry's mtime, so a layer's digest depends only on its content.
var epoch = time.Unix(0, 0)

// treeLayer makes one reproducible layer of entries; parents missing from entries are
// added as directories 0755 owned by root.
func treeLayer(entries []entry) (v1.Layer, error) {
	byPath := map[string]entry{}
	for _, e := range entries {
		byPath[e.dst] = e
		for dir := path.Dir(e.dst); dir != "/" && dir != "."; dir = path.Dir(dir) {
			if _, ok := byPath[dir]; !ok {
				byPath[dir] = entry{dst: dir, mode: fs.ModeDir | 0o755}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), ModTime: epoch, Uid: e.uid, Gid: e.uid, Mode: int64(e.mode.Perm()), Format: tar.FormatPAX}
		switch {
		case e.mode&fs.ModeDir != 0:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			data, err := os.ReadFile(e.src)
			if err != nil {
				return nil, err
			}
			h.Typeflag, h.Size = tar.TypeReg, int64(len(data))
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// walk lists host path src (a file, or a directory and everything under it) as entries
// under dst, owned by uid.
func walk(src, dst string, uid int) ([]entry, error) {
	var out []entry
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := path.Join(dst, filepath.ToSlash(rel))
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{dst: target, src: p, mode: info.Mode(), uid: uid}
		if info.Mode()&fs.ModeSymlink != 0 {
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !info.Mode().IsRegular() && !info.IsDir() {
			return nil // devices, sockets: never part of an image
		}
		out = append(out, e)
		return nil
	})
	return out, err
}

// baseLayer is the runtime base: the root filesystem e2e/images/base.sh assembled.
func baseLayer(rootfs string) (v1.Layer, error) {
	entries, err := walk(rootfs, "/", 0)
	if err != nil {
		return nil, fmt.Errorf("the base root filesystem %s: %w", rootfs, err)
	}
	// Everything is root's but the nonroot user's home.
	for i := range entries {
		if entries[i].dst == "/home/nonroot" {
			entries[i].uid = 65532
		}
	}
	return treeLayer(entries[1:]) // not "/" itself
}

// appLayer holds img's files.
func appLayer(img Image, roots Roots) (v1.Layer, error) {
	var entries []entry
	for _, f := range img.Files {
		src := filepath.Join(roots.of(f.From), f.Src)
		if f.From == Build {
			stripped, err := stripDebug(src)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", img.Name, err)
			}
			defer os.Remove(stripped)
			src = stripped
		}
		more, err := walk(src, strings.TrimSuffix(f.Dst, "/"), 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", img.Name, err)
		}
		for _, e := range more {
			// Files are read-only to everyone but root; executables stay executable.
			if e.mode.IsRegular() {
				e.mode = 0o644 | e.mode&0o111
			}
			entries = append(entries, e)
		}
	}
	return treeLayer(entries)
}

// assemble builds img on base.
func assemble(img Image, base v1.Layer, roots Roots) (v1.Image, error) {
	app, err := appLayer(img, roots)
	if err != nil {
		return nil, err
	}
	out, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), base, app)
	if err != nil {
		return nil, err
	}
	cf, err := out.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", "amd64", v1.Time{Time: epoch}
	cf.Config.User, cf.Config.WorkingDir = img.User, "/"
	cf.Config.Entrypoint, cf.Config.Cmd = img.Entrypoint, img.Cmd
	cf.Config.Env = []string{defaultPath}
	for _, kv := range img.Env {
		cf.Config.Env = append(cf.Config.Env, kv[0]+"="+kv[1])
	}
	if len(img.Expose) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range img.Expose {
			cf.Config.ExposedPorts[fmt.Sprintf("%d/tcp", p)] = struct{}{}
		}
	}
	return mutate.ConfigFile(out, cf)
}

// pushAll builds every image and pushes it to registry. Application images share one
// tag derived from their digests, so a changed build gets a new tag (and kubelets pull
// it); infrastructure images keep their version tags. Returns the application tag.
func pushAll(registry string, roots Roots, rootfs string, log io.Writer) (string, error) {
	base, err := baseLayer(rootfs)
	if err != nil {
		return "", err
	}
	built := make([]v1.Image, len(images))
	h := sha256.New()
	for i, img := range images {
		if built[i], err = assemble(img, base, roots); err != nil {
			return "", err
		}
		if img.Tag == "" {
			d, err := built[i].Digest()
			if err != nil {
				return "", err
			}
			h.Write([]byte(d.String()))
		}
	}
	appTag := "local-" + hex.EncodeToString(h.Sum(nil))[:12]
	for i, img := range images {
		tag := img.Tag
		if tag == "" {
			tag = appTag
		}
		ref, err := name.NewTag(fmt.Sprintf("%s/%s:%s", registry, img.Name, tag), name.Insecure)
		if err != nil {
			return "", err
		}
		began := time.Now()
		if err := remote.Write(ref, built[i]); err != nil {
			return "", fmt.Errorf("pushing %s: %w", ref, err)
		}
		size, err := imageSize(built[i])
		if err != nil {
			return "", err
		}
		fmt.Fprintf(log, "pushed %s (%.1f MB compressed) in %.1f s\n", ref, float64(size)/1e6, time.Since(began).Seconds())
	}
	return appTag, nil
}

// imageSize is the sum of img's compressed layers.
func imageSize(img v1.Image) (int64, error) {
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// stripDebug writes a copy of binary src without its debug sections, as the
// Dockerfile's build stage does; returns the copy's path.
func stripDebug(src string) (string, error) {
	out, err := os.CreateTemp("", "imagebuild-*")
	if err != nil {
		return "", err
	}
	out.Close()
	if msg, err := exec.Command("strip", "--strip-debug", "-o", out.Name(), src).CombinedOutput(); err != nil {
		os.Remove(out.Name())
		return "", fmt.Errorf("strip %s: %v: %s", src, err, msg)
	}
	return out.Name(), nil
}
