// Command controlplane runs a real Kubernetes control plane, and optionally a real node,
// for tests and for the local stack: embedded etcd, the upstream kube-apiserver and
// kube-controller-manager (built from k8s.io/kubernetes at the version go.mod pins, by
// e2e/build.sh, next to this binary), self-generated certificates and a service-account
// key. It writes an admin kubeconfig, prints "ready" once the API answers, and on
// SIGTERM stops its children and etcd and exits 0.
//
// With --node it also runs a node (node.go): containerd and runc, the CNI plugins on the
// bridge ks0, the kubelet, kube-proxy (nftables) and kube-scheduler, with the API server
// on the bridge where pods reach it; at exit it removes everything the node added
// (cleanup.go), as `controlplane cleanup` does for a launcher that was killed.
//
// Versions: k8s.io/kubernetes v1.36.3 is the newest patch of the newest minor that the
// Go module proxy serves with every staging module published (v0.36.3), and it builds
// with the machine's Go 1.26; etcd v3.6.8 is the version that release's go.mod pins.
//
//	controlplane --state DIR [--exit-with-parent] [--node --node-bin DIR --registry HOST:PORT]
//	controlplane cleanup [--node-bin DIR]
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cleanup" {
		fs := flag.NewFlagSet("cleanup", flag.ExitOnError)
		n := nodeFlags(fs)
		_ = fs.Parse(os.Args[2:])
		if err := n.cleanup(); err != nil {
			fail(err)
		}
		return
	}
	state := flag.String("state", "", "directory for certificates, etcd data, logs and the kubeconfig")
	withParent := flag.Bool("exit-with-parent", false, "shut down when the process that started this one exits, and remove --state (for test harnesses)")
	withNode := flag.Bool("node", false, "also run a node: containerd, the kubelet, kube-proxy and kube-scheduler, on the bridge "+bridgeName)
	n := nodeFlags(flag.CommandLine)
	flag.Parse()
	if *withParent {
		go watchParent()
	}
	if *state == "" {
		fail(fmt.Errorf("--state is required"))
	}
	var nd *node
	if *withNode {
		if n.bin == "" || n.registry == "" {
			fail(fmt.Errorf("--node needs --node-bin and --registry"))
		}
		n.state = *state
		nd = n
	}
	err := run(*state, nd)
	if nd != nil {
		if cerr := nd.cleanup(); cerr != nil {
			fmt.Fprintln(os.Stderr, "controlplane: cleaning up the node:", cerr)
		}
	}
	if *withParent {
		// A harness's cluster is disposable: leave nothing behind in the temp dir.
		_ = os.RemoveAll(*state)
	}
	if err != nil {
		fail(err)
	}
}

// nodeFlags declares where a node's parts are, for running one and for cleaning up.
func nodeFlags(fs *flag.FlagSet) *node {
	n := &node{}
	self, _ := os.Executable()
	n.k8sBin = filepath.Dir(self)
	fs.StringVar(&n.bin, "node-bin", "", "containerd, its shim, runc, nft and cni/ (e2e/build-node.sh)")
	fs.StringVar(&n.root, "node-root", "/var/lib/kubesentiment-e2e", "the node's persistent state")
	fs.StringVar(&n.run, "node-run", "/run/kubesentiment-e2e", "the node's volatile state")
	fs.StringVar(&n.registry, "registry", "", "HOST:PORT of the local registry the node pulls from")
	return n
}

// watchParent sends this process SIGTERM once its parent is gone, so a test process that
// exits without cleaning up never leaves a control plane behind.
func watchParent() {
	parent := os.Getppid()
	for os.Getppid() == parent {
		time.Sleep(500 * time.Millisecond)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "controlplane:", err)
	os.Exit(1)
}

func run(state string, nd *node) error {
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Dir(self)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	certs, err := writeCerts(state)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	// Without a node everything is on loopback; with one, the API server listens on the
	// node's bridge, where pods reach it through the kubernetes Service.
	host := "127.0.0.1"
	var children []<-chan error
	if nd != nil {
		host = nodeIP
		if err := nd.prepareHost(); err != nil {
			return fmt.Errorf("preparing the host: %w", err)
		}
	}

	etcdURL, etcd, err := startEtcd(filepath.Join(state, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	port, err := freePort(host)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://%s:%d", host, port)
	kubeconfig := filepath.Join(state, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, certs.ca, certs.token); err != nil {
		return err
	}
	if nd != nil {
		if err := nd.writeConfigs(certs, server); err != nil {
			return err
		}
		containerd, err := nd.startContainerd(ctx)
		if err != nil {
			return err
		}
		children = append(children, containerd)
	}

	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + host,
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(state, "apiserver-certs"),
		"--tls-cert-file=" + certs.serverCert,
		"--tls-private-key-file=" + certs.serverKey,
		"--client-ca-file=" + certs.ca,
		"--token-auth-file=" + certs.tokenFile,
		"--service-account-key-file=" + certs.saKey,
		"--service-account-signing-key-file=" + certs.saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	}
	if nd != nil {
		apiArgs = append(apiArgs,
			"--advertise-address="+nodeIP,
			"--kubelet-client-certificate="+certs.apiserverKubeletClient,
			"--kubelet-client-key="+certs.apiserverKubeletClientKey,
			"--kubelet-certificate-authority="+certs.ca,
			"--kubelet-preferred-address-types=InternalIP",
			// Aggregated APIs (metrics-server) through the front proxy.
			"--requestheader-client-ca-file="+certs.frontProxyCA,
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file="+certs.frontProxyClient,
			"--proxy-client-key-file="+certs.frontProxyClientKey,
			"--enable-aggregator-routing=true",
		)
	}
	apiserver, err := spawn(ctx, filepath.Join(bin, "kube-apiserver"), filepath.Join(state, "kube-apiserver.log"), apiArgs...)
	if err != nil {
		return err
	}
	children = append(children, apiserver)
	if err := waitReady(ctx, server, certs.ca, certs.token); err != nil {
		return fmt.Errorf("kube-apiserver never became ready (see %s): %w", filepath.Join(state, "kube-apiserver.log"), err)
	}

	// Without a node only the controllers the tests need; with one, the default set (node
	// lifecycle, disruption budgets, autoscaling, …).
	controllers := "garbage-collector-controller,deployment-controller,replicaset-controller,namespace-controller,serviceaccount-controller," +
		"serviceaccount-token-controller,endpointslice-controller,root-ca-certificate-publisher-controller"
	kcmArgs := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--service-account-private-key-file=" + certs.saKey,
		"--root-ca-file=" + certs.ca,
		"--use-service-account-credentials=false",
		"--v=0",
	}
	if nd != nil {
		controllers = "*"
		kcmArgs = append(kcmArgs, "--cluster-signing-cert-file="+certs.ca, "--cluster-signing-key-file="+certs.caKey,
			"--node-monitor-grace-period=20s", "--horizontal-pod-autoscaler-sync-period=5s")
	}
	controllerManager, err := spawn(ctx, filepath.Join(bin, "kube-controller-manager"), filepath.Join(state, "kube-controller-manager.log"),
		append(kcmArgs, "--controllers="+controllers)...)
	if err != nil {
		return err
	}
	children = append(children, controllerManager)
	if nd != nil {
		agents, err := nd.startAgents(ctx, kubeconfig)
		if err != nil {
			return err
		}
		children = append(children, agents...)
	}

	fmt.Printf("ready %s kubeconfig=%s\n", server, kubeconfig)
	exited := make(chan error, len(children))
	for _, c := range children {
		go func(c <-chan error) { exited <- <-c }(c)
	}
	select {
	case <-ctx.Done():
	case err := <-exited:
		stop()
		waitAll(exited, len(children)-1)
		return fmt.Errorf("a component exited (see the logs in %s): %v", state, err)
	}
	// Children got SIGTERM from the cancelled context; wait for them before etcd goes.
	waitAll(exited, len(children))
	return nil
}

func waitAll(exited <-chan error, n int) {
	for i := 0; i < n; i++ {
		<-exited
	}
}

// spawn starts a child that gets SIGTERM when ctx ends; the channel yields its exit.
func spawn(ctx context.Context, path, logFile string, args ...string) (<-chan error, error) {
	return spawnEnv(ctx, os.Environ(), path, logFile, args...)
}

// spawnEnv is spawn with the child's environment.
func spawnEnv(ctx context.Context, env []string, path, logFile string, args ...string) (<-chan error, error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cmd.Wait()
		log.Close()
	}()
	out := make(chan error, 1)
	go func() {
		select {
		case err := <-done:
			out <- err
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				out <- err
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				out <- <-done
			}
		}
	}()
	return out, nil
}

func startEtcd(dir string) (string, *embed.Etcd, error) {
	clientPort, err := freePort("127.0.0.1")
	if err != nil {
		return "", nil, err
	}
	peerPort, err := freePort("127.0.0.1")
	if err != nil {
		return "", nil, err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return cu.String(), e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return "", nil, fmt.Errorf("etcd did not start within 60 s")
	}
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitReady(ctx context.Context, server, caFile, token string) error {
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("timed out")
}

func writeKubeconfig(path, server, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	caData := base64.StdEncoding.EncodeToString(ca)
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: default
current-context: local
`, server, caData, token)
	return os.WriteFile(path, []byte(cfg), 0o600)
}
