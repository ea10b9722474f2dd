package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certFiles are the cluster's credentials, all under state/pki.
type certFiles struct {
	dir                                                       string
	ca, caKey, serverCert, serverKey, saKey, tokenFile, token string
	// A node's: the kubelet's client (system:node:ks-node) and serving certificates, the
	// API server's client of kubelets, and the front proxy for aggregated APIs
	// (metrics-server).
	kubeletClient, kubeletClientKey, kubeletServing, kubeletServingKey string
	apiserverKubeletClient, apiserverKubeletClientKey                  string
	frontProxyCA, frontProxyClient, frontProxyClientKey                string
}

func pkiPaths(state string) certFiles {
	dir := filepath.Join(state, "pki")
	p := func(name string) string { return filepath.Join(dir, name) }
	return certFiles{
		dir: dir, ca: p("ca.crt"), caKey: p("ca.key"), serverCert: p("apiserver.crt"), serverKey: p("apiserver.key"),
		saKey: p("sa.key"), tokenFile: p("tokens.csv"),
		kubeletClient: p("kubelet-client.crt"), kubeletClientKey: p("kubelet-client.key"),
		kubeletServing: p("kubelet.crt"), kubeletServingKey: p("kubelet.key"),
		apiserverKubeletClient: p("apiserver-kubelet-client.crt"), apiserverKubeletClientKey: p("apiserver-kubelet-client.key"),
		frontProxyCA: p("front-proxy-ca.crt"), frontProxyClient: p("front-proxy-client.crt"), frontProxyClientKey: p("front-proxy-client.key"),
	}
}

// writeCerts makes a CA, the API server's serving certificate (loopback, the node's
// address and the kubernetes Service's), a service-account key, an admin bearer token
// in system:masters, and a node's certificates. Existing files are reused.
func writeCerts(state string) (certFiles, error) {
	f := pkiPaths(state)
	if tok, err := os.ReadFile(filepath.Join(f.dir, "admin.token")); err == nil {
		f.token = string(tok)
		return f, nil
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return f, err
	}
	ca, caKey, err := selfSigned("kubesentiment-local-ca")
	if err != nil {
		return f, err
	}
	frontCA, frontKey, err := selfSigned("kubesentiment-front-proxy-ca")
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
	server := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	leaves := []struct {
		cert, key string
		signer    *x509.Certificate
		signerKey crypto.Signer
		tmpl      x509.Certificate
	}{
		{f.serverCert, f.serverKey, ca, caKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{server},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(nodeIP), net.ParseIP(kubernetesServiceIP)},
		}},
		{f.kubeletClient, f.kubeletClientKey, ca, caKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
			ExtKeyUsage: []x509.ExtKeyUsage{client},
		}},
		{f.kubeletServing, f.kubeletServingKey, ca, caKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: nodeName},
			ExtKeyUsage: []x509.ExtKeyUsage{server},
			DNSNames:    []string{nodeName, "localhost"},
			IPAddresses: []net.IP{net.ParseIP(nodeIP), net.ParseIP("127.0.0.1")},
		}},
		{f.apiserverKubeletClient, f.apiserverKubeletClientKey, ca, caKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{client},
		}},
		{f.frontProxyClient, f.frontProxyClientKey, frontCA, frontKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "front-proxy-client"},
			ExtKeyUsage: []x509.ExtKeyUsage{client},
		}},
	}
	for i, l := range leaves {
		der, key, err := issue(l.tmpl, int64(10+i), l.signer, l.signerKey)
		if err != nil {
			return f, err
		}
		if err := writePEMs(l.cert, l.key, der, key); err != nil {
			return f, err
		}
	}
	writes := []struct {
		path string
		data []byte
	}{
		{f.ca, pemBlock("CERTIFICATE", ca.Raw)},
		{f.caKey, mustPKCS8(caKey)},
		{f.frontProxyCA, pemBlock("CERTIFICATE", frontCA.Raw)},
		{f.saKey, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))},
		{f.tokenFile, []byte(f.token + ",admin,admin,\"system:masters\"\n")},
		{filepath.Join(f.dir, "admin.token"), []byte(f.token)},
	}
	for _, w := range writes {
		if err := os.WriteFile(w.path, w.data, 0o600); err != nil {
			return f, err
		}
	}
	return f, nil
}

func selfSigned(cn string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// issue signs tmpl with a fresh P-256 key; returns the certificate and the key.
func issue(tmpl x509.Certificate, serial int64, signer *x509.Certificate, signerKey crypto.Signer) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.AddDate(10, 0, 0)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, signer, &key.PublicKey, signerKey)
	return der, key, err
}

func writePEMs(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(certPath, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyPath, mustPKCS8(key), 0o600)
}

func mustPKCS8(key crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return pemBlock("PRIVATE KEY", der)
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}
