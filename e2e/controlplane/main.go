// Command controlplane runs a real Kubernetes control plane on loopback, for tests and
// for the local stack: embedded etcd, the upstream kube-apiserver and
// kube-controller-manager (built from k8s.io/kubernetes at the version go.mod pins, by
// e2e/build.sh, next to this binary), self-generated certificates and a service-account
// key. It writes an admin kubeconfig, prints "ready" once the API answers, and on
// SIGTERM stops its children and etcd and exits 0.
//
// Versions: k8s.io/kubernetes v1.36.3 is the newest patch of the newest minor that the
// Go module proxy serves with every staging module published (v0.36.3), and it builds
// with the machine's Go 1.26; etcd v3.6.8 is the version that release's go.mod pins.
//
//	controlplane --state DIR [--exit-with-parent]
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
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
	state := flag.String("state", "", "directory for certificates, etcd data, logs and the kubeconfig")
	withParent := flag.Bool("exit-with-parent", false, "shut down when the process that started this one exits, and remove --state (for test harnesses)")
	flag.Parse()
	if *withParent {
		go watchParent()
	}
	if *state == "" {
		fail(fmt.Errorf("--state is required"))
	}
	err := run(*state)
	if *withParent {
		// A harness's cluster is disposable: leave nothing behind in the temp dir.
		_ = os.RemoveAll(*state)
	}
	if err != nil {
		fail(err)
	}
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

func run(state string) error {
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

	etcdURL, etcd, err := startEtcd(filepath.Join(state, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	port, err := freePort()
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	kubeconfig := filepath.Join(state, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, certs.ca, certs.token); err != nil {
		return err
	}

	apiserver, err := spawn(ctx, filepath.Join(bin, "kube-apiserver"), filepath.Join(state, "kube-apiserver.log"),
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir="+filepath.Join(state, "apiserver-certs"),
		"--tls-cert-file="+certs.serverCert,
		"--tls-private-key-file="+certs.serverKey,
		"--client-ca-file="+certs.ca,
		"--token-auth-file="+certs.tokenFile,
		"--service-account-key-file="+certs.saKey,
		"--service-account-signing-key-file="+certs.saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=Node,RBAC",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=0",
	)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, server, certs.ca, certs.token); err != nil {
		return fmt.Errorf("kube-apiserver never became ready (see %s): %w", filepath.Join(state, "kube-apiserver.log"), err)
	}

	controllers, err := spawn(ctx, filepath.Join(bin, "kube-controller-manager"), filepath.Join(state, "kube-controller-manager.log"),
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=garbage-collector-controller,deployment-controller,replicaset-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,endpointslice-controller,root-ca-certificate-publisher-controller",
		"--service-account-private-key-file="+certs.saKey,
		"--root-ca-file="+certs.ca,
		"--use-service-account-credentials=false",
		"--v=0",
	)
	if err != nil {
		return err
	}

	fmt.Printf("ready %s kubeconfig=%s\n", server, kubeconfig)
	select {
	case <-ctx.Done():
	case err := <-apiserver:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case err := <-controllers:
		return fmt.Errorf("kube-controller-manager exited: %v", err)
	}
	// Children got SIGTERM from the cancelled context; wait for them before etcd goes.
	<-controllers
	<-apiserver
	return nil
}

// spawn starts a child that gets SIGTERM when ctx ends; the channel yields its exit.
func spawn(ctx context.Context, path, logFile string, args ...string) (<-chan error, error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
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
	clientPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	peerPort, err := freePort()
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
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

type certFiles struct {
	ca, serverCert, serverKey, saKey, tokenFile, token string
}

// writeCerts makes a CA, a serving certificate for loopback, a service-account key, and
// an admin bearer token in system:masters. Existing files are reused.
func writeCerts(state string) (certFiles, error) {
	dir := filepath.Join(state, "pki")
	f := certFiles{
		ca:         filepath.Join(dir, "ca.crt"),
		serverCert: filepath.Join(dir, "apiserver.crt"),
		serverKey:  filepath.Join(dir, "apiserver.key"),
		saKey:      filepath.Join(dir, "sa.key"),
		tokenFile:  filepath.Join(dir, "tokens.csv"),
	}
	if tok, err := os.ReadFile(filepath.Join(dir, "admin.token")); err == nil {
		f.token = string(tok)
		return f, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return f, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubesentiment-local-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return f, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return f, err
	}
	tokenBytes := make([]byte, 24)
	if _, err := rand.Read(tokenBytes); err != nil {
		return f, err
	}
	f.token = hex.EncodeToString(tokenBytes)
	writes := []struct {
		path string
		data []byte
	}{
		{f.ca, pemBlock("CERTIFICATE", caDER)},
		{f.serverCert, pemBlock("CERTIFICATE", srvDER)},
		{f.serverKey, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(srvKey))},
		{f.saKey, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))},
		{f.tokenFile, []byte(f.token + ",admin,admin,\"system:masters\"\n")},
		{filepath.Join(dir, "admin.token"), []byte(f.token)},
	}
	for _, w := range writes {
		if err := os.WriteFile(w.path, w.data, 0o600); err != nil {
			return f, err
		}
	}
	return f, nil
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
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
