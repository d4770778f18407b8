// Package labcluster runs the lab's Kubernetes control plane as local
// processes: etcd (Debian's etcd-server), and kube-apiserver and
// kube-controller-manager built from source (pkg/labbuild). There is no
// kubelet, so no pods; the API, service-account tokens (TokenRequest), RBAC,
// namespace deletion and owner-reference garbage collection all work.
//
// The processes outlive the command that started them (the lab stays up
// between hostctl runs); their PIDs, logs, data and PKI live in one state
// directory, and Up is idempotent: running, healthy components are kept.
package labcluster

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
	"syscall"
	"time"

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
}

// Fixed lab ports, away from a system etcd or API server on the defaults.
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

// Server is the API server URL.
func Server() string { return "https://127.0.0.1:" + strconv.Itoa(apiPort) }

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
		if pid, ok := running(c.Dir, comp.name); ok {
			if err := comp.ready(ctx, c); err == nil {
				fmt.Fprintf(c.Progress, "lab cluster: %s already running (pid %d)\n", comp.name, pid)
				continue
			}
		}
		bin := comp.bin(c)
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s: %w (etcd: apt-get install etcd-server; the others come from the lab build)", comp.name, err)
		}
		pid, err := spawn(c.Dir, comp.name, bin, comp.args(c))
		if err != nil {
			return err
		}
		if err := waitReady(ctx, c, comp, pid); err != nil {
			return err
		}
		fmt.Fprintf(c.Progress, "lab cluster: %s ready (pid %d, %s)\n", comp.name, pid, time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

func waitReady(ctx context.Context, c Config, comp component, pid int) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		err := comp.ready(ctx, c)
		if err == nil {
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("%s exited while starting: see %s", comp.name, logPath(c.Dir, comp.name))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (%v): see %s", comp.name, readyTimeout, err, logPath(c.Dir, comp.name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Down stops the components newest first and etcd last: stopping etcd with
// the others leaves them retrying it for half a minute.
func Down(ctx context.Context, dir string) error {
	var errs []error
	for i := len(components) - 1; i >= 0; i-- {
		errs = append(errs, stop(ctx, dir, components[i].name))
	}
	return errors.Join(errs...)
}

// Purge stops everything and deletes the state directory.
func Purge(ctx context.Context, dir string) error {
	return errors.Join(Down(ctx, dir), os.RemoveAll(dir))
}

func logPath(dir, name string) string { return filepath.Join(dir, "logs", name+".log") }
func pidPath(dir, name string) string { return filepath.Join(dir, "run", name+".pid") }

// spawn starts a detached process (its own session) with output to its log.
func spawn(dir, name, bin string, args []string) (int, error) {
	logf, err := os.OpenFile(logPath(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while this process lives; the PID file is the record.
	go cmd.Wait()
	if err := os.WriteFile(pidPath(dir, name), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return 0, err
	}
	return pid, nil
}

// running reports the recorded PID if that process still runs the component.
func running(dir, name string) (int, bool) {
	data, err := os.ReadFile(pidPath(dir, name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !alive(pid) {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), name) {
		return 0, false // the PID was reused by something else
	}
	return pid, true
}

func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited; field 3 is the state.
	f := strings.Fields(string(stat))
	return len(f) > 2 && f[2] != "Z"
}

func stop(ctx context.Context, dir, name string) error {
	pid, ok := running(dir, name)
	if !ok {
		os.Remove(pidPath(dir, name))
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(stopGrace)
	for alive(pid) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; alive(pid) && i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if alive(pid) {
		return fmt.Errorf("%s (pid %d) did not stop", name, pid)
	}
	return os.Remove(pidPath(dir, name))
}

func pki(dir, name string) string { return filepath.Join(dir, "pki", name) }

func etcdArgs(c Config) []string {
	client := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(etcdPeerPort)
	return []string{"--name", "lab", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "lab=" + peer}
}

func apiserverArgs(c Config) []string {
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdPort),
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(apiPort), "--advertise-address=127.0.0.1",
		// Endpoints may not name loopback addresses otherwise.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + pki(c.Dir, "apiserver.pem"), "--tls-private-key-file=" + pki(c.Dir, "apiserver-key.pem"),
		"--client-ca-file=" + pki(c.Dir, "ca.pem"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki(c.Dir, "sa.pub"), "--service-account-signing-key-file=" + pki(c.Dir, "sa-key.pem"),
		"--service-cluster-ip-range=" + serviceCIDR, "--authorization-mode=RBAC", "--enable-priority-and-fairness=false",
	}
}

func controllerArgs(c Config) []string {
	return []string{
		"--kubeconfig=" + Kubeconfig(c.Dir), "--authentication-kubeconfig=" + Kubeconfig(c.Dir),
		"--authorization-kubeconfig=" + Kubeconfig(c.Dir),
		"--bind-address=127.0.0.1", "--secure-port=10257", "--leader-elect=false",
		"--root-ca-file=" + pki(c.Dir, "ca.pem"), "--service-account-private-key-file=" + pki(c.Dir, "sa-key.pem"),
		"--cluster-signing-cert-file=" + pki(c.Dir, "ca.pem"), "--cluster-signing-key-file=" + pki(c.Dir, "ca-key.pem"),
		"--use-service-account-credentials=false",
	}
}

func etcdReady(ctx context.Context, c Config) error {
	return httpOK(ctx, http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(etcdPort)+"/health")
}

func apiReady(ctx context.Context, c Config) error {
	hc, err := AdminHTTPClient(c.Dir)
	if err != nil {
		return err
	}
	return httpOK(ctx, hc, Server()+"/readyz")
}

func controllerReady(ctx context.Context, c Config) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // its self-signed serving cert; only /healthz is read
	}}}
	return httpOK(ctx, hc, "https://127.0.0.1:10257/healthz")
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
	return os.WriteFile(Kubeconfig(c.Dir), []byte(kubeconfig(c.Dir)), 0o600)
}

func kubeconfig(dir string) string {
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
`, Server(), pki(dir, "ca.pem"), adminUser, pki(dir, "admin.pem"), pki(dir, "admin-key.pem"), adminUser)
}
