package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
	"github.com/meshvm/meshvm/vmagent/agenttest"
	"github.com/meshvm/meshvm/vmagent/config"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/server"
)

// env is a real agent server on a loopback port with real mTLS, over a
// sandbox root, and the CA that signs its callers.
type env struct {
	addr  string
	dir   string
	ca    *mtls.CA
	agent *agenttest.Agent
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func startAgent(t testing.TB) env {
	t.Helper()
	return startAgentWith(t, config.Default().Limits)
}

func startAgentWith(t testing.TB, limits config.Limits) env {
	t.Helper()
	return startAgentServing(t, limits, nil)
}

// startAgentServing serves wrap's service in front of the agent's (an
// agent of an older release), or the agent's own when wrap is nil.
func startAgentServing(t testing.TB, limits config.Limits, wrap func(*server.Server) agentv1.AgentServiceServer) env {
	t.Helper()
	a := agenttest.Start(t, agenttest.Options{Limits: &limits, Wrap: wrap})
	return env{addr: a.Addr, dir: a.Root, ca: a.CA, agent: a}
}

func (e env) client(t testing.TB) *agentclient.Client {
	t.Helper()
	return e.dial(t, e.clientTLS(t))
}

func (e env) clientTLS(t testing.TB) *tls.Config { return e.agent.ClientTLS(t) }

func (e env) dial(t testing.TB, cfg *tls.Config) *agentclient.Client { return e.agent.Client(t, cfg) }

// raw is the service without agentclient, for streams no caller would
// send (cut short, longer than declared).
func (e env) raw(t testing.TB) agentv1.AgentServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(e.clientTLS(t))))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOnlyCallersFromThePinnedCAGetIn(t *testing.T) {
	e := startAgent(t)
	if _, err := e.client(t).Version(ctxT(t)); err != nil {
		t.Fatalf("good certificate: got %v, want the call to succeed", err)
	}
	other, err := mtls.NewCA("someone else", time.Hour)
	must(t, err)
	otherCert, otherKey, err := other.IssueClient("intruder", time.Hour)
	must(t, err)
	expiredCert, expiredKey, err := e.ca.Issue(mtls.IssueOptions{CommonName: "late", Client: true,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	must(t, err)
	pinned := x509Pool(t, e.ca.CertPEM())
	// Each is refused in the TLS handshake (the alert, or a pipe the agent
	// closed: which one the client sees first is a race). An agent that was
	// simply down refuses the connection instead, and fails the last check.
	tests := []struct {
		name string
		cfg  *tls.Config
	}{
		{"no client certificate", &tls.Config{RootCAs: pinned, ServerName: "localhost", MinVersion: tls.VersionTLS13}},
		{"certificate from another CA", clientCfg(t, otherCert, otherKey, e.ca.CertPEM())},
		{"expired certificate", clientCfg(t, expiredCert, expiredKey, e.ca.CertPEM())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.dial(t, tt.cfg).Version(ctxT(t))
			if !errors.Is(err, agenterr.Unavailable) || errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused") {
				t.Fatalf("got %v, want the handshake refused by a listening agent", err)
			}
		})
	}
	if _, err := e.client(t).Version(ctxT(t)); err != nil {
		t.Fatalf("good certificate after the refusals: %v, want the agent still serving", err)
	}
}

func x509Pool(t *testing.T, pemData []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemData) {
		t.Fatal("bad CA PEM")
	}
	return p
}

func clientCfg(t *testing.T, cert, key, ca []byte) *tls.Config {
	t.Helper()
	cfg, err := mtls.ClientConfig(cert, key, ca, "localhost")
	must(t, err)
	return cfg
}

func TestFileDeliveryOverGRPC(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	ctx := ctxT(t)
	data := bytes.Repeat([]byte("envoy"), 600_000) // 3 MB: several chunks
	f := agentclient.BytesFile("/usr/local/bin/envoy", data)
	res, err := c.PutFile(ctx, f)
	if err != nil || !res.Sent || res.Bytes != int64(len(data)) {
		t.Fatalf("first delivery: got %+v, %v, want all %d bytes sent", res, err, len(data))
	}
	got, _ := os.ReadFile(filepath.Join(e.dir, "usr/local/bin/envoy"))
	if !bytes.Equal(got, data) {
		t.Fatalf("delivered content differs")
	}
	res, err = c.PutFile(ctx, f)
	if err != nil || res.Sent || res.Bytes != 0 {
		t.Errorf("second delivery: got %+v, %v, want nothing sent", res, err)
	}
}

func TestFileDeliveryRefusals(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	tests := []struct {
		name  string
		file  agentclient.File
		class error
	}{
		{"outside the allowlist", agentclient.BytesFile("/etc/passwd", []byte("x")), agenterr.PermissionDenied},
		{"traversal", agentclient.BytesFile("/var/lib/istio/envoy/../../../../etc/shadow", []byte("x")), agenterr.InvalidArgument},
		{"token too wide", agentclient.File{Path: "/var/run/secrets/tokens/istio-token", Mode: 0o644, Open: agentclient.BytesFile("", []byte("t")).Open}, agenterr.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.PutFile(ctxT(t), tt.file)
			if !errors.Is(err, tt.class) {
				t.Fatalf("got %v, want a %v error", err, tt.class)
			}
		})
	}
}

// sum is the hex SHA-256 of b.
func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func TestInterruptedAndOversizedTransfersLeaveOldFile(t *testing.T) {
	e := startAgent(t)
	c := e.raw(t)
	old := []byte("ISTIO_META_OLD='1'\n")
	target := filepath.Join(e.dir, "var/lib/istio/envoy/cluster.env")
	must(t, os.WriteFile(target, old, 0o644))
	newData := bytes.Repeat([]byte("A='b'\n"), 100_000)

	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := c.PutFile(ctx)
		must(t, err)
		must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
			Path: "/var/lib/istio/envoy/cluster.env", Size: uint64(len(newData)), Sha256: sum(newData)}}}))
		must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: newData[:1000]}}))
		// The agent has started writing; now the caller goes away.
		waitFor(t, "a temporary file", func() bool { return len(temps(t, e.dir)) == 1 })
		cancel()
		waitFor(t, "the temporary file to be removed", func() bool { return len(temps(t, e.dir)) == 0 })
		if got, _ := os.ReadFile(target); !bytes.Equal(got, old) {
			t.Errorf("got %q, want the old content", got)
		}
	})
	t.Run("more data than declared", func(t *testing.T) {
		stream, err := c.PutFile(ctxT(t))
		must(t, err)
		short := newData[:10]
		must(t, stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
			Path: "/var/lib/istio/envoy/cluster.env", Size: uint64(len(short)), Sha256: sum(short)}}}))
		stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: newData[:5000]}})
		_, err = stream.CloseAndRecv()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "size mismatch") {
			t.Fatalf("got %v, want InvalidArgument size mismatch", err)
		}
		if got, _ := os.ReadFile(target); !bytes.Equal(got, old) {
			t.Errorf("got %q, want the old content", got)
		}
		if n := len(entries(t, filepath.Dir(target))) + len(temps(t, e.dir)); n != 1 {
			t.Errorf("got %d entries, want only cluster.env", n)
		}
	})
}

// temps lists the delivery temporary files anywhere below root (a file
// kept in a root-only copy is written there first).
func temps(t testing.TB, root string) []string {
	t.Helper()
	var out []string
	must(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), ".meshvm-tmp-") {
			out = append(out, p)
		}
		return err
	}))
	return out
}

func entries(t *testing.T, dir string) []os.DirEntry {
	ents, err := os.ReadDir(dir)
	must(t, err)
	return ents
}

// waitFor polls a condition the agent reaches asynchronously; it fails the
// test only if the condition never holds, it asserts no timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSidecarWithoutSystemdSaysSo(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	_, err := c.Sidecar(ctxT(t), agentv1.SidecarAction_SIDECAR_ACTION_START)
	if !errors.Is(err, agenterr.FailedPrecondition) || !strings.Contains(err.Error(), "systemd") {
		t.Fatalf("got %v, want FailedPrecondition naming systemd", err)
	}
	st, err := c.Status(ctxT(t))
	must(t, err)
	if st.GetSidecar().GetError() == "" {
		t.Errorf("status: got no sidecar error, want one saying systemd is unreachable")
	}
	if len(st.GetInstallSteps()) != len(postinst.StepNames()) {
		t.Errorf("status: got %d install steps, want %d", len(st.GetInstallSteps()), len(postinst.StepNames()))
	}
	if st.GetLastErrors()["sidecar"] == "" {
		t.Errorf("status: got last errors %v, want the sidecar failure recorded", st.GetLastErrors())
	}
	// Without the sidecar's state the capture rules are not judged, and it says why.
	if c := st.GetCapture(); c.GetState() != agentv1.CaptureState_CAPTURE_STATE_SKIPPED || len(c.GetChecks()) != 1 ||
		!strings.Contains(c.GetChecks()[0].GetDetail(), "no systemd") {
		t.Errorf("status: got capture %v, want SKIPPED saying the sidecar's state is unknown", c)
	}
}

func TestProbeOnlyLocal(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	_, err := c.Probe(ctxT(t), &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_TCP, Host: "192.0.2.1", Port: 80})
	if !errors.Is(err, agenterr.InvalidArgument) || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("got %v, want InvalidArgument for a remote host", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer lis.Close()
	port := lis.Addr().(*net.TCPAddr).Port
	r, err := c.Probe(ctxT(t), &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_TCP, Port: uint32(port)})
	if err != nil || !r.GetOk() {
		t.Fatalf("got %v, %v, want the local port to answer", r, err)
	}
}

// CallService calls only service names; one that does not resolve comes
// back as the call's error, not the RPC's.
func TestCallServiceOnlyServiceNames(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	for _, host := range []string{"192.0.2.1", "example.com."} {
		if _, err := c.CallService(ctxT(t), &agentv1.CallServiceRequest{Host: host, Port: 80}); !errors.Is(err, agenterr.InvalidArgument) {
			t.Errorf("%s: got %v, want InvalidArgument", host, err)
		}
	}
	r, err := c.CallService(ctxT(t), &agentv1.CallServiceRequest{Host: "no-such-svc.no-such-ns", Port: 5000, Path: "/hello"})
	if err != nil || r.GetOk() || !strings.Contains(r.GetError(), "no-such-svc.no-such-ns") {
		t.Errorf("unresolvable service: %v, %v; want the failure in the response", r, err)
	}
}

func TestInstallDryRunOverGRPC(t *testing.T) {
	e := startAgent(t)
	c := e.client(t)
	steps, err := c.Install(ctxT(t), &agentv1.InstallRequest{DryRun: true,
		HostsEntries: []*agentv1.HostsEntry{{Ip: "10.0.0.1", Names: []string{"istiod.istio-system.svc"}}}})
	if err != nil {
		t.Fatalf("dry run: %v (%v)", err, steps)
	}
	for _, s := range steps {
		if s.GetOutcome() == agentv1.StepOutcome_STEP_OUTCOME_CHANGED {
			t.Errorf("dry run step %s reported a change", s.GetName())
		}
	}
	if _, err := os.Stat(filepath.Join(e.dir, "etc/hosts")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry run wrote /etc/hosts")
	}
	_, err = c.Install(ctxT(t), &agentv1.InstallRequest{HostsEntries: []*agentv1.HostsEntry{{Ip: "not-an-ip", Names: []string{"x"}}}})
	if !errors.Is(err, agenterr.InvalidArgument) {
		t.Errorf("got %v, want InvalidArgument for a bad IP", err)
	}
}

// BenchmarkPutFile measures delivery of a 150 MB binary through the real
// server over loopback mTLS; bench/agentbench compares it with a local copy.
func BenchmarkPutFile(b *testing.B) {
	e := startAgent(b)
	c := e.client(b)
	data := make([]byte, 150<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		data[0] = byte(i) // a new digest every round
		h := sha256.Sum256(data)
		f := agentclient.BytesFile("/usr/local/bin/envoy", data)
		f.SHA256, f.Size = hex.EncodeToString(h[:]), int64(len(data))
		b.StartTimer()
		if _, err := c.PutFile(context.Background(), f); err != nil {
			b.Fatal(err)
		}
	}
}

// GetStatus says when the token pilot-agent reads is not the root-only
// copy the agent keeps, and forgets a token error once the file reads again.
func TestStatusTokenChangedAndErrorCleared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the root-only copy is read as root's")
	}
	e := startAgent(t)
	c := e.client(t)
	jwt := func(sub string) []byte {
		part := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
		return []byte(part(`{"alg":"RS256"}`) + "." + part(`{"sub":"`+sub+`","exp":4102444800}`) + "." + part("sig"))
	}
	live := filepath.Join(e.dir, "run/secrets/tokens/istio-token") // var/run is a link to /run
	kept := filepath.Join(e.dir, "var/lib/meshvm/secrets/istio-token")
	for _, p := range []string{live, kept} {
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, jwt("system:serviceaccount:vmns:vmsa"), 0o600))
	}
	status := func() *agentv1.GetStatusResponse {
		st, err := c.Status(ctxT(t))
		must(t, err)
		return st
	}
	if st := status(); st.GetToken().GetSubject() != "system:serviceaccount:vmns:vmsa" || st.GetToken().GetDiffersFromPersistent() {
		t.Fatalf("same token in both places: got %+v, want it read and not flagged", st.GetToken())
	}
	must(t, os.WriteFile(live, jwt("system:serviceaccount:vmns:other"), 0o600))
	if st := status(); !st.GetToken().GetDiffersFromPersistent() {
		t.Errorf("token changed where istio-proxy writes: got %+v, want differs_from_persistent", st.GetToken())
	}
	must(t, os.WriteFile(live, []byte("not a token"), 0o600))
	if st := status(); st.GetLastErrors()["token"] == "" || st.GetToken() != nil {
		t.Errorf("unreadable token: got %+v, errors %v, want a token error and no token", st.GetToken(), st.GetLastErrors())
	}
	must(t, os.WriteFile(live, jwt("system:serviceaccount:vmns:vmsa"), 0o600))
	if st := status(); st.GetLastErrors()["token"] != "" || st.GetToken().GetDiffersFromPersistent() {
		t.Errorf("token fixed: got errors %v, token %+v, want the error gone", st.GetLastErrors(), st.GetToken())
	}
	// A second name for the token (a hard link istio-proxy could plant to
	// a file it may not read) is refused, not read as root.
	must(t, os.Link(live, live+".other"))
	if st := status(); !strings.Contains(st.GetLastErrors()["token"], "hard links") {
		t.Errorf("hard-linked token: got errors %v, want it refused for its other names", st.GetLastErrors())
	}
}
