package main

// A real node beside the control plane (--node): containerd with runc, the CNI
// plugins on a bridge of this machine, the kubelet, kube-proxy in nftables mode and
// kube-scheduler. Every address is on the bridge ks0 (198.18.0.0/24, from the
// benchmarking range 198.18.0.0/15) or in the Service range 198.19.0.0/24; a forward
// rule keeps pods from reaching anything beyond the bridge. Everything the node adds to
// the machine is listed by cleanup() (cleanup.go), which removes it.

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	bridgeName          = "ks0"
	nodeName            = "ks-node"
	nodeIP              = "198.18.0.1"
	podCIDR             = "198.18.0.0/24"
	serviceCIDR         = "198.19.0.0/24"
	kubernetesServiceIP = "198.19.0.1"
	clusterDNSIP        = "198.19.0.10"
	nftTable            = "kubesentiment-node"
	pauseImageTag       = "pause:3.10.2"
)

// node holds where the node's parts live.
type node struct {
	state    string // the control plane's state (certificates, configs, logs)
	root     string // persistent node state: /var/lib/kubesentiment-e2e
	run      string // volatile node state: /run/kubesentiment-e2e
	bin      string // containerd, its shim, runc, nft; cni/ holds the CNI plugins
	k8sBin   string // kubelet, kube-proxy, kube-scheduler (beside this binary)
	registry string // HOST:PORT of the local registry
}

func (n node) socket() string { return filepath.Join(n.run, "containerd", "containerd.sock") }

func (n node) env() []string {
	return append(os.Environ(), "PATH="+n.bin+":"+os.Getenv("PATH"))
}

// sh runs a command of the host's setup (the node's own nft before any other), failing
// with its output.
func (n node) sh(name string, args ...string) error {
	path := name
	if own := filepath.Join(n.bin, name); n.bin != "" && fileExists(own) {
		path = own
	}
	cmd := exec.Command(path, args...)
	cmd.Env = n.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// prepareHost makes the bridge, turns on forwarding (remembering its old value), and
// installs the rule that keeps pod traffic on the bridge.
func (n node) prepareHost() error {
	for _, d := range []string{n.root, n.run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	old, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return err
	}
	saved := filepath.Join(n.root, "ip_forward.orig")
	if _, err := os.Stat(saved); os.IsNotExist(err) {
		if err := os.WriteFile(saved, old, 0o600); err != nil {
			return err
		}
	}
	if _, err := net.InterfaceByName(bridgeName); err != nil {
		if err := n.sh("ip", "link", "add", bridgeName, "type", "bridge"); err != nil {
			return err
		}
	}
	_ = n.sh("ip", "addr", "add", nodeIP+"/24", "dev", bridgeName) // already there on a restart
	if err := n.sh("ip", "link", "set", bridgeName, "up"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return err
	}
	rules := fmt.Sprintf(`table inet %[1]s {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname "%[2]s" oifname != "%[2]s" drop
		oifname "%[2]s" iifname != "%[2]s" drop
	}
}
`, nftTable, bridgeName)
	path := filepath.Join(n.state, "isolation.nft")
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		return err
	}
	_ = n.sh("nft", "delete", "table", "inet", nftTable)
	return n.sh("nft", "-f", path)
}

// writeConfigs writes the CNI network, containerd's, the kubelet's and kube-proxy's
// configuration, and the node's kubeconfigs.
func (n node) writeConfigs(certs certFiles, server string) error {
	// kube-proxy insists on a port for its health and metrics servers: free ones on loopback.
	var proxyPorts [2]int
	for i := range proxyPorts {
		var err error
		if proxyPorts[i], err = freePort("127.0.0.1"); err != nil {
			return err
		}
	}
	cniConf := filepath.Join(n.state, "cni", "net.d")
	if err := os.MkdirAll(cniConf, 0o700); err != nil {
		return err
	}
	files := map[string]string{
		filepath.Join(cniConf, "10-kubesentiment.conflist"): fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kubesentiment",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "rangeStart": "198.18.0.10", "gateway": %q}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "backend": "nftables"}
  ]
}
`, bridgeName, filepath.Join(n.root, "cni"), podCIDR, nodeIP),
		filepath.Join(n.state, "containerd.toml"): fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
imports = []
# NRI would listen under /var/run; nothing here uses it.
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = %[3]q

[ttrpc]
  address = '%[3]s.ttrpc'

[plugins.'io.containerd.internal.v1.opt']
  path = '%[1]s/opt'

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = %[4]q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[5]q]
    conf_dir = %[6]q

[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[7]q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %[8]q

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`, filepath.Join(n.root, "containerd"), filepath.Join(n.run, "containerd"), n.socket(), filepath.Join(n.bin, "runc"),
			filepath.Join(n.bin, "cni"), cniConf, n.registry+"/"+pauseImageTag, filepath.Join(n.state, "certs.d")),
		// The registry serves plain HTTP on loopback.
		filepath.Join(n.state, "certs.d", n.registry, "hosts.toml"): fmt.Sprintf(`server = "http://%[1]s"

[host."http://%[1]s"]
  capabilities = ["pull", "resolve"]
`, n.registry),
		// Pods resolve through the cluster's DNS only; the host's resolvers are outside.
		filepath.Join(n.state, "resolv.conf"): "",
		filepath.Join(n.state, "kubelet.yaml"): fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[2]q}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [%[3]s]
resolvConf: %[4]q
tlsCertFile: %[5]q
tlsPrivateKeyFile: %[6]q
containerRuntimeEndpoint: unix://%[7]s
podLogsDir: %[8]q
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
maxPods: 110
`, nodeIP, certs.ca, clusterDNSIP, filepath.Join(n.state, "resolv.conf"), certs.kubeletServing, certs.kubeletServingKey, n.socket(),
			filepath.Join(n.root, "pod-logs")),
		filepath.Join(n.state, "kube-proxy.yaml"): fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: %[1]q}
hostnameOverride: %[2]s
clusterCIDR: %[3]s
healthzBindAddress: 127.0.0.1:%[5]d
metricsBindAddress: 127.0.0.1:%[6]d
nodePortAddresses: [%[4]s/32]
nftables: {masqueradeAll: true, minSyncPeriod: 1s, syncPeriod: 30s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, filepath.Join(n.state, "kubeconfig"), nodeName, podCIDR, nodeIP, proxyPorts[0], proxyPorts[1]),
	}
	if err := kubeconfigWithCert(filepath.Join(n.state, "kubelet.kubeconfig"), server, certs.ca, certs.kubeletClient, certs.kubeletClientKey); err != nil {
		return err
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// startContainerd runs containerd and waits for its socket.
func (n node) startContainerd(ctx context.Context) (<-chan error, error) {
	done, err := spawnEnv(ctx, n.env(), filepath.Join(n.bin, "containerd"), filepath.Join(n.state, "containerd.log"),
		"--config", filepath.Join(n.state, "containerd.toml"))
	if err != nil {
		return nil, err
	}
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("unix", n.socket()); err == nil {
			c.Close()
			return done, nil
		}
		select {
		case err := <-done:
			return nil, fmt.Errorf("containerd exited (see containerd.log): %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("containerd's socket never appeared (see containerd.log)")
}

// startAgents runs kube-scheduler, the kubelet and kube-proxy.
func (n node) startAgents(ctx context.Context, kubeconfig string) ([]<-chan error, error) {
	var out []<-chan error
	for _, c := range []struct {
		name string
		args []string
	}{
		{"kube-scheduler", []string{"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig,
			"--authorization-kubeconfig=" + kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=0"}},
		{"kubelet", []string{"--config=" + filepath.Join(n.state, "kubelet.yaml"), "--kubeconfig=" + filepath.Join(n.state, "kubelet.kubeconfig"),
			"--root-dir=" + filepath.Join(n.root, "kubelet"), "--hostname-override=" + nodeName, "--node-ip=" + nodeIP, "--v=0"}},
		{"kube-proxy", []string{"--config=" + filepath.Join(n.state, "kube-proxy.yaml"), "--v=0"}},
	} {
		done, err := spawnEnv(ctx, n.env(), filepath.Join(n.k8sBin, c.name), filepath.Join(n.state, c.name+".log"), c.args...)
		if err != nil {
			return nil, err
		}
		out = append(out, done)
	}
	return out, nil
}

// kubeconfigWithCert writes a kubeconfig authenticating with a client certificate.
func kubeconfigWithCert(path, server, caFile, certFile, keyFile string) error {
	read := func(p string) (string, error) {
		b, err := os.ReadFile(p)
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read(caFile)
	if err != nil {
		return err
	}
	cert, err := read(certFile)
	if err != nil {
		return err
	}
	key, err := read(keyFile)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: %s, certificate-authority-data: %s}
users:
- name: node
  user: {client-certificate-data: %s, client-key-data: %s}
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
`, server, ca, cert, key)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
