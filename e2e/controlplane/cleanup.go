package main

// cleanup removes everything a node added to the machine, whether the launcher stopped
// cleanly or was killed: the pods' and containerd's processes, every mount under the
// node's state, the bridge and its veths, the nftables tables, the kubepods cgroups and
// the state directories, and it puts IP forwarding back as it was. It is idempotent:
// `controlplane cleanup` (e2e/down.sh) runs it again after the launcher's own.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func (n node) cleanup() error {
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Processes first, so nothing holds a mount, a netns or a cgroup.
	for attempt := 0; attempt < 50 && n.killNodeProcesses() > 0; attempt++ {
		time.Sleep(100 * time.Millisecond)
	}
	note(n.unmountAll())
	if out, err := exec.Command("ip", "-o", "link", "show", "master", bridgeName).Output(); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) > 1 {
				_ = exec.Command("ip", "link", "del", strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]).Run()
			}
		}
	}
	if err := exec.Command("ip", "link", "show", bridgeName).Run(); err == nil {
		note(n.sh("ip", "link", "del", bridgeName))
	}
	note(n.deleteNftTables())
	if old, err := os.ReadFile(filepath.Join(n.root, "ip_forward.orig")); err == nil {
		note(os.WriteFile("/proc/sys/net/ipv4/ip_forward", old, 0o644))
	}
	note(removeCgroups("kubepods"))
	for _, d := range []string{n.root, n.run} {
		note(os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

// killNodeProcesses SIGKILLs what runs in a pod's cgroup or from the node's binaries;
// returns how many it signalled.
func (n node) killNodeProcesses() int {
	self := os.Getpid()
	agents := map[string]bool{"kubelet": true, "kube-proxy": true, "kube-scheduler": true}
	entries, _ := os.ReadDir("/proc")
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		cgroups, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		ours := strings.Contains(string(cgroups), "/kubepods") ||
			(n.bin != "" && strings.HasPrefix(exe, n.bin+"/")) ||
			(n.k8sBin != "" && filepath.Dir(exe) == n.k8sBin && agents[filepath.Base(exe)])
		if ours && syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}

// unmountAll detaches every mount under the node's state, deepest first.
func (n node) unmountAll() error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, prefix := range []string{n.root, n.run} {
			if prefix != "" && (mp == prefix || strings.HasPrefix(mp, prefix+"/")) {
				points = append(points, mp)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// deleteNftTables removes the tables of kube-proxy, the CNI portmap plugin and our own
// isolation rule.
func (n node) deleteNftTables() error {
	if _, err := os.Stat(filepath.Join(n.bin, "nft")); err != nil {
		return nil // never installed, so never used
	}
	out, err := exec.Command(filepath.Join(n.bin, "nft"), "list", "tables").Output()
	if err != nil {
		return fmt.Errorf("nft list tables: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // "table ip kube-proxy"
		if len(f) != 3 || f[0] != "table" {
			continue
		}
		if f[2] == "kube-proxy" || f[2] == nftTable || strings.HasPrefix(f[2], "cni") {
			if err := n.sh("nft", "delete", "table", f[1], f[2]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the cgroup `name` under every controller's hierarchy, children
// first (the kubelet's pods live under kubepods).
func removeCgroups(name string) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if unified := "/sys/fs/cgroup/" + name; dirExists(unified) {
		roots = append(roots, unified)
	}
	var errs []error
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for attempt := 0; attempt < 20; attempt++ {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
