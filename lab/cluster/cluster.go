// Package cluster runs the lab's Kubernetes control plane as local
// processes: etcd (Debian's etcd-server), and kube-apiserver and
// kube-controller-manager built from source (lab/build). There is no
// kubelet, so no pods; the API, service-account tokens (TokenRequest), RBAC,
// namespace deletion and owner-reference garbage collection all work.
//
// The processes outlive the command that started them (the lab stays up
// between hostctl runs); their PIDs, logs, data and PKI live in one state
// directory, and Up is idempotent: running, healthy components are kept.
package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/lab/procs"
	"github.com/meshvm/meshvm/pkg/mtls"
)

// Config describes the lab control plane.
type Config struct {
	// Dir is the state directory (pki/, etcd/, logs/, run/, kubeconfig).
	Dir string
	// APIServer and ControllerManager are the built binaries.
	APIServer, ControllerManager string
	// Etcd is the etcd binary; empty means "etcd" on PATH.
	Etcd string
	// ExtraSANs are more addresses the API server certificate must name.
	ExtraSANs []net.IP
	// Progress receives a line per step.
	Progress io.Writer
	// Ports default to the lab instance's (see lab/instance: Dir's parent
	// is the lab's state directory); a run that must not share the lab (a
	// benchmark beside the lab tests) may give its own.
	Ports Ports
}

// Ports are where the control plane listens on 127.0.0.1.
type Ports struct{ API, Etcd, EtcdPeer, Controller int }

func (c Config) ports() Ports {
	p, def := c.Ports, PortsOf(instance.Of(filepath.Dir(c.Dir)))
	if p.API == 0 {
		p.API = def.API
	}
	if p.Etcd == 0 {
		p.Etcd = def.Etcd
	}
	if p.EtcdPeer == 0 {
		p.EtcdPeer = def.EtcdPeer
	}
	if p.Controller == 0 {
		p.Controller = def.Controller
	}
	return p
}

// PortsOf are the lab instance's control-plane ports.
func PortsOf(i instance.Instance) Ports {
	return Ports{API: i.Port(apiPort, instance.APIPort), Etcd: i.Port(etcdPort, instance.EtcdPort),
		EtcdPeer: i.Port(etcdPeerPort, instance.EtcdPeerPort), Controller: i.Port(10257, instance.ControllerManagerPort)}
}

func (c Config) server() string { return "https://127.0.0.1:" + strconv.Itoa(c.ports().API) }

// Instance 0's ports, away from a system etcd or API server on the defaults.
const (
	apiPort       = 16443
	etcdPort      = 23790
	etcdPeerPort  = 23800
	serviceCIDR   = "10.96.0.0/24"
	readyTimeout  = 90 * time.Second
	stopGrace     = 10 * time.Second
	adminUser     = "meshvm-admin"
	kubeconfigRel = "kubeconfig"
)

// Server is the URL of the API server whose state is dir.
func Server(dir string) string { return Config{Dir: dir}.server() }

// Kubeconfig is the admin kubeconfig path in dir.
func Kubeconfig(dir string) string { return filepath.Join(dir, kubeconfigRel) }

type component struct {
	name  string
	args  func(c Config) []string
	bin   func(c Config) string
	ready func(ctx context.Context, c Config) error
}

var components = []component{
	{"etcd", etcdArgs, func(c Config) string { return orDefault(c.Etcd, "etcd") }, etcdReady},
	{"kube-apiserver", apiserverArgs, func(c Config) string { return c.APIServer }, apiReady},
	{"kube-controller-manager", controllerArgs, func(c Config) string { return c.ControllerManager }, controllerReady},
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Up starts whatever is not running and waits until each component is ready.
func Up(ctx context.Context, c Config) error {
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = dir
	if c.Ports == (Ports{}) {
		// The lab's parts are its state directory's children.
		if _, err := instance.Claim(filepath.Dir(c.Dir)); err != nil {
			return err
		}
	}
	for _, d := range []string{"pki", "etcd", "logs", "run"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
			return err
		}
	}
	if err := ensurePKI(c); err != nil {
		return fmt.Errorf("lab PKI: %w", err)
	}
	for _, comp := range components {
		start := time.Now()
		if pid, ok := procs.Dir(c.Dir).Running(comp.name); ok {
			if err := comp.ready(ctx, c); err == nil {
				fmt.Fprintf(c.Progress, "lab cluster: %s already running (pid %d)\n", comp.name, pid)
				continue
			}
		}
		bin := comp.bin(c)
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s: %w (etcd: apt-get install etcd-server; the others come from the lab build)", comp.name, err)
		}
		pid, err := procs.Dir(c.Dir).Start(procs.Spec{Name: comp.name, Bin: bin, Args: comp.args(c)})
		if err != nil {
			return err
		}
		ready := func(ctx context.Context) error { return comp.ready(ctx, c) }
		if err := procs.Dir(c.Dir).WaitReady(ctx, comp.name, pid, readyTimeout, ready); err != nil {
			return err
		}
		fmt.Fprintf(c.Progress, "lab cluster: %s ready (pid %d, %s)\n", comp.name, pid, time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// Down stops the components newest first and etcd last: stopping etcd with
// the others leaves them retrying it for half a minute.
func Down(ctx context.Context, dir string) error {
	var errs []error
	for i := len(components) - 1; i >= 0; i-- {
		errs = append(errs, procs.Dir(dir).Stop(ctx, components[i].name, stopGrace))
	}
	return errors.Join(errs...)
}

func pki(dir, name string) string { return filepath.Join(dir, "pki", name) }

func etcdArgs(c Config) []string {
	client := "http://127.0.0.1:" + strconv.Itoa(c.ports().Etcd)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.ports().EtcdPeer)
	return []string{"--name", "lab", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "lab=" + peer}
}

func apiserverArgs(c Config) []string {
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.ports().Etcd),
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(c.ports().API), "--advertise-address=127.0.0.1",
		// Endpoints may not name loopback addresses otherwise.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + pki(c.Dir, "apiserver.pem"), "--tls-private-key-file=" + pki(c.Dir, "apiserver-key.pem"),
		"--client-ca-file=" + pki(c.Dir, "ca.pem"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		// A cap as real clusters may have: meshvm names it when it shortens a VM's token.
		"--service-account-max-token-expiration=2160h",
		"--service-account-key-file=" + pki(c.Dir, "sa.pub"), "--service-account-signing-key-file=" + pki(c.Dir, "sa-key.pem"),
		"--service-cluster-ip-range=" + serviceCIDR, "--authorization-mode=RBAC", "--enable-priority-and-fairness=false",
	}
}

func controllerArgs(c Config) []string {
	return []string{
		"--kubeconfig=" + Kubeconfig(c.Dir), "--authentication-kubeconfig=" + Kubeconfig(c.Dir),
		"--authorization-kubeconfig=" + Kubeconfig(c.Dir),
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(c.ports().Controller), "--leader-elect=false",
		"--root-ca-file=" + pki(c.Dir, "ca.pem"), "--service-account-private-key-file=" + pki(c.Dir, "sa-key.pem"),
		"--cluster-signing-cert-file=" + pki(c.Dir, "ca.pem"), "--cluster-signing-key-file=" + pki(c.Dir, "ca-key.pem"),
		"--use-service-account-credentials=false",
	}
}

func etcdReady(ctx context.Context, c Config) error {
	return httpOK(ctx, http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(c.ports().Etcd)+"/health")
}

func apiReady(ctx context.Context, c Config) error {
	hc, err := AdminHTTPClient(c.Dir)
	if err != nil {
		return err
	}
	return httpOK(ctx, hc, c.server()+"/readyz")
}

func controllerReady(ctx context.Context, c Config) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // its self-signed serving cert; only /healthz is read
	}}}
	return httpOK(ctx, hc, "https://127.0.0.1:"+strconv.Itoa(c.ports().Controller)+"/healthz")
}

func httpOK(ctx context.Context, hc *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// AdminHTTPClient is an HTTP client with the lab admin's certificate.
func AdminHTTPClient(dir string) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(pki(dir, "admin.pem"), pki(dir, "admin-key.pem"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(pki(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12,
	}}}, nil
}

// ensurePKI makes the CA, the API server's serving certificate, the admin
// client certificate, the service-account signing key and the kubeconfig,
// once; later runs reuse them so tokens and kubeconfigs stay valid.
func ensurePKI(c Config) error {
	if _, err := os.Stat(Kubeconfig(c.Dir)); err == nil {
		return nil
	}
	ca, err := mtls.NewCA("meshvm lab cluster CA", 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP("10.96.0.1")}, c.ExtraSANs...)
	srvCert, srvKey, err := ca.Issue(mtls.IssueOptions{CommonName: "kube-apiserver",
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPs:      ips, NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	admCert, admKey, err := ca.Issue(mtls.IssueOptions{CommonName: adminUser, Organization: []string{"system:masters"},
		Client: true, NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.pem": ca.CertPEM(), "ca-key.pem": caKey,
		"apiserver.pem": srvCert, "apiserver-key.pem": srvKey,
		"admin.pem": admCert, "admin-key.pem": admKey,
		"sa-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, data := range files {
		if err := os.WriteFile(pki(c.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	// The kubeconfig goes last: its presence marks the PKI complete.
	return os.WriteFile(Kubeconfig(c.Dir), []byte(kubeconfig(c.Dir, c.server())), 0o600)
}

func kubeconfig(dir, server string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: meshvm-lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: meshvm-lab
  context: {cluster: meshvm-lab, user: %s}
current-context: meshvm-lab
`, server, pki(dir, "ca.pem"), adminUser, pki(dir, "admin.pem"), pki(dir, "admin-key.pem"), adminUser)
}
