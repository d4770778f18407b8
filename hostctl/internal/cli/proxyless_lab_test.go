package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	clientsecurity "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	labbuild "github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/onboard"
	"github.com/meshvm/meshvm/pkg/mesh/mtlsprobe"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

// The proxyless VMs: a gRPC server and a client, each in its own group with
// its own service account, so each has its own SPIFFE identity.
const (
	pxServer, pxClient = "pxs", "pxc"
	pxNamespace        = "vmns"
	pxPort             = 7070
	// pxProbe is the echo server's HTTP port, which the group probes.
	pxProbe = 8080
)

var pxTarget = fmt.Sprintf("xds:///grpc-server.%s.svc.cluster.local:%d", pxNamespace, pxPort)

func pxPrincipal(sa string) string { return "cluster.local/ns/" + pxNamespace + "/sa/" + sa }

// pxConfig is a config onboarding vm proxyless in group (service account
// of the same name), in the lab whose state is state.
func pxConfig(t *testing.T, path, state, group, vm string) {
	t.Helper()
	cfg := fmt.Sprintf(`version: 1
stateDir: %s
cluster:
  provider: lab
workload:
  namespace: %s
  group: %s
  serviceAccount: %s
  port: %d
  portName: grpc
  app: false
  sidecar: proxyless
  probe: {path: /, port: %d}
vms:
- name: %s
`, state, pxNamespace, group, group, pxPort, pxProbe, vm)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestProxylessOnLab onboards two proxyless VMs (pilot-agent alone, no
// Envoy) and has them talk over Istio's mTLS with Istio's own echo server
// and client as their apps.
func TestProxylessOnLab(t *testing.T) {
	_, work, cfgPath, state := labSetup(t, pxServer)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	pxConfig(t, cfgPath, state, "grpc-server", pxServer)
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m")
	logOutput(t, "up", out)
	if err != nil {
		t.Fatal(err)
	}
	proxylessOnLab(t, ctx, work, state, cfgPath)
}

// proxylessOnLab runs the proxyless checks in a lab that is up, with the
// server VM onboarded through serverCfg: the client VM joins through a
// config of its own and leaves again at the end.
func proxylessOnLab(t *testing.T, ctx context.Context, work, state, serverCfg string) {
	t.Helper()
	begun := time.Now()
	clientCfg := filepath.Join(work, "proxyless-client.yaml")
	pxConfig(t, clientCfg, state, "grpc-client", pxClient)
	t.Cleanup(func() {
		if out, err := run(t, "--config", clientCfg, "vm", "rm", pxClient); err != nil {
			t.Errorf("vm rm %s: %v\n%s", pxClient, err, out)
		}
	})
	out, err := run(t, "--config", clientCfg, "up", "--timeout", "10m")
	logOutput(t, "up of the client VM", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "proxyless: pilot-agent runs without Envoy") {
		t.Errorf("up does not say what a proxyless VM waits on:\n%s", out)
	}
	lab := labVMs(state)
	sh := func(vm, cmd string) string {
		out, err := lab.Exec(ctx, vm, nil, "sh", "-c", cmd)
		if err != nil {
			t.Fatalf("%s: %s: %v\n%s", vm, cmd, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	// pilot-agent alone, no capture, the gRPC bootstrap naming absolute certificate paths.
	for _, vm := range []string{pxServer, pxClient} {
		if got := sh(vm, "ls /usr/local/bin; iptables-legacy-save -t nat; iptables-nft-save -t nat"); strings.Contains(got, "envoy") || strings.Contains(got, "ISTIO_") || !strings.Contains(got, "pilot-agent") {
			t.Errorf("%s: want pilot-agent, no envoy and no Istio chains:\n%s", vm, got)
		}
		// pilot-agent writes it as it starts, which up does not wait for.
		boot := sh(vm, "for i in $(seq 30); do [ -s "+workloadfiles.GRPCBootstrapPath+" ] && break; sleep 1; done; cat "+workloadfiles.GRPCBootstrapPath)
		if !strings.Contains(boot, `"/etc/certs/cert-chain.pem"`) || !strings.Contains(boot, "unix:///") {
			t.Errorf("%s: gRPC bootstrap without absolute certificates or the agent's socket:\n%s", vm, boot)
		}
	}
	for _, cfg := range []string{serverCfg, clientCfg} {
		out, err := run(t, "--config", cfg, "vm", "status", "-o", "json")
		var st []fleet.VMStatus
		if jerr := json.Unmarshal([]byte(out), &st); jerr != nil || len(st) != 1 {
			t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
		}
		if c := st[0].Capture; c == nil || c.State != fleet.CaptureOff || !strings.HasPrefix(c.Detail, "not applicable: proxyless") {
			t.Errorf("%s: capture verdict %+v, want off: not applicable: proxyless", st[0].Name, c)
		}
	}

	// The apps: Istio's echo server on the server VM, as istio-proxy (the
	// key is its own, 0600), after the sidecar, once the certificate is there.
	bins, err := labbuild.Build(ctx, labbuild.Options{ModuleDir: filepath.Join(os.Getenv("MESHVM_SOURCE"), "lab", "toolchain"), CacheDir: labbuild.DefaultCacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	put := func(vm, name string) {
		f, err := os.Open(bins.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := lab.Transfer(ctx, vm, "/usr/local/bin/"+name, f, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	put(pxServer, "echo-server")
	put(pxClient, "echo-client")
	unit := fmt.Sprintf(`[Unit]
Description=Istio's echo server, a proxyless gRPC app
After=istio.service

[Service]
User=istio-proxy
Group=istio-proxy
WorkingDirectory=/
Environment=GRPC_XDS_BOOTSTRAP=%s
ExecStartPre=/bin/sh -c 'until [ -s /etc/certs/cert-chain.pem ] && [ -s %[1]s ]; do sleep 1; done'
ExecStart=/usr/local/bin/echo-server --grpc %d --xds-grpc-server %[2]d --port %d --tcp 9090
Restart=always
RestartSec=2
TimeoutStartSec=120
`, workloadfiles.GRPCBootstrapPath, pxPort, pxProbe)
	if err := lab.Transfer(ctx, pxServer, "/etc/systemd/system/grpc-echo.service", strings.NewReader(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(pxServer, "systemctl daemon-reload && systemctl start grpc-echo.service")

	// 1. The server registers through its app's xDS connection and turns Healthy on its probe.
	clients, err := fleet.KubeClients(filepath.Join(state, "lab", "cluster", "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	serverSpec := workload.Spec{Namespace: pxNamespace, Group: "grpc-server", Network: "vm-network"}
	serverIP, _ := lab.Info(ctx, pxServer)
	waitEntryOr(t, ctx, clients, serverSpec, serverIP.Address(), func() string {
		return sh(pxServer, "journalctl -u grpc-echo -u istio --no-pager -n 60")
	})
	t.Logf("server WorkloadEntry Healthy %s after the client VM's up began", time.Since(begun).Round(time.Second))

	// The mesh's policy: mTLS required, the client's identity alone allowed.
	policies(t, ctx, clients, pxPrincipal("grpc-client"))
	defer removePolicies(ctx, clients)

	// The identity the policy names is the client VM's certificate's.
	clientM, _ := lab.Info(ctx, pxClient)
	ac, err := onboard.Dial(mustState(t, state), clientM.Address())
	if err != nil {
		t.Fatal(err)
	}
	st, err := ac.Status(ctx)
	ac.Close()
	if err != nil || !slices.Contains(st.GetWorkloadCertificate().GetUriSans(), "spiffe://"+pxPrincipal("grpc-client")) {
		t.Fatalf("%s's workload certificate: %v (%v), want spiffe://%s", pxClient, st.GetWorkloadCertificate().GetUriSans(), err, pxPrincipal("grpc-client"))
	}

	// 2. The client VM calls the server by its mesh name, through xDS.
	call := func() (string, error) {
		out, err := lab.Exec(ctx, pxClient, nil, "sh", "-c", "cd / && runuser -u istio-proxy -- env GRPC_XDS_BOOTSTRAP="+workloadfiles.GRPCBootstrapPath+
			" /usr/local/bin/echo-client "+pxTarget+" --count 3 --timeout 10s 2>&1")
		return string(out), err
	}
	expectCall := func(what string, ok bool, want string) string {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			out, err := call()
			if (err == nil) == ok && strings.Contains(out, want) {
				t.Logf("%s: %s", what, lastLines(out, 4))
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: got %v\n%s\nwant ok=%v with %q; the server's logs:\n%s", what, err, out, ok, want,
					sh(pxServer, "journalctl -u grpc-echo -u istio --no-pager -n 40"))
			}
			time.Sleep(2 * time.Second)
		}
	}
	// 3. The mTLS is shown, not assumed: once the server has the policy,
	// plaintext and a client without a certificate are refused, and the
	// server's certificate is its SPIFFE identity, issued by istiod's CA.
	addr := net.JoinHostPort(serverIP.Address(), fmt.Sprint(pxPort))
	strictMTLS(t, ctx, clients, addr, "/ns/"+pxNamespace+"/sa/grpc-server")
	// So a call that succeeds now was made over mTLS, by the client's identity.
	expectCall("call from "+pxClient+" allowed by its principal", true, "Hostname="+pxServer)

	// 4. Authorization on the server matches the caller's identity: another
	// principal allowed and the call is denied; restored, allowed again.
	setPrincipal(t, ctx, clients, pxPrincipal("other"))
	expectCall("call with another principal allowed", false, "PermissionDenied")
	verdicts := pxVerify(t, clientCfg, false)
	if v := verdictOf(verdicts, pxClient, fleet.MeshCallCheck); v.Result != "FAIL" || !strings.Contains(v.Detail, "PermissionDenied") {
		t.Errorf("verify while another principal is allowed: %+v, want FAIL with PermissionDenied", v)
	}
	setPrincipal(t, ctx, clients, pxPrincipal("grpc-client"))
	expectCall("call with the client's principal restored", true, "Hostname="+pxServer)

	// 5. verify reports these calls as checked, and still not Envoy's data path.
	verdicts = pxVerify(t, clientCfg, true)
	if v := verdictOf(verdicts, pxClient, fleet.MeshCallCheck); v.Result != "ok" || !strings.Contains(v.Detail, "so the call was mTLS") {
		t.Errorf("verify from the client VM: %+v, want the call ok and shown to be mTLS", v)
	}
	verdicts = pxVerify(t, serverCfg, true)
	if v := verdictOf(verdicts, pxServer, "mTLS on "+addr+" (proxyless gRPC)"); v.Result != "ok" {
		t.Errorf("verify of the server VM's port: %+v, want ok", v)
	}
	if v := verdictOf(verdicts, pxServer, fleet.MeshCallCheck); v.Result != "skipped" || !strings.Contains(v.Detail, "only xDS connection") {
		t.Errorf("verify from the server VM, whose app holds pilot-agent's xDS: %+v, want skipped, saying why", v)
	}
	if v := verdictOf(verdicts, pxServer, "capture rules"); v.Result != "skipped" || !strings.Contains(v.Detail, "not applicable: proxyless") {
		t.Errorf("verify's capture verdict on a proxyless VM: %+v", v)
	}
	// doctor finds nothing wrong with a proxyless VM for want of Envoy or capture.
	for _, cfg := range []string{serverCfg, clientCfg} {
		out, _ := run(t, "--config", cfg, "doctor", "-o", "json")
		var findings []fleet.Finding
		if err := json.Unmarshal([]byte(out), &findings); err != nil {
			t.Fatalf("doctor -o json: %v\n%s", err, out)
		}
		for _, f := range findings {
			if f.Result == "fail" || (f.Check == "capture rules" && f.Result != "ok") {
				t.Errorf("doctor --config %s: %+v", filepath.Base(cfg), f)
			}
		}
	}
	t.Logf("proxyless checks took %s", time.Since(begun).Round(time.Second))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// waitEntryOr waits for the entry at addr to be Healthy, showing logs() when it does not.
func waitEntryOr(t *testing.T, ctx context.Context, c workload.Clients, s workload.Spec, addr string, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e, ok, err := workload.FindEntry(ctx, c, s, addr)
		if err == nil && ok && e.Healthy == "True" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WorkloadEntry at %s: %+v (found %v, %v), want Healthy; logs:\n%s", addr, e, ok, err, logs())
		}
		time.Sleep(time.Second)
	}
}

var pxSelector = &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "grpc-server"}}

// policies applies PeerAuthentication STRICT, the ISTIO_MUTUAL
// DestinationRule (without it gRPC falls back to plaintext silently) and
// an AuthorizationPolicy allowing principal alone to call Echo.
func policies(t *testing.T, ctx context.Context, c workload.Clients, principal string) {
	t.Helper()
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: pxNamespace} }
	pa := &clientsecurity.PeerAuthentication{ObjectMeta: meta("default"),
		Spec: securityapi.PeerAuthentication{Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}}}
	dr := &clientnetworking.DestinationRule{ObjectMeta: meta("grpc-server"),
		Spec: networkingapi.DestinationRule{Host: "grpc-server." + pxNamespace + ".svc.cluster.local",
			TrafficPolicy: &networkingapi.TrafficPolicy{Tls: &networkingapi.ClientTLSSettings{Mode: networkingapi.ClientTLSSettings_ISTIO_MUTUAL}}}}
	ap := &clientsecurity.AuthorizationPolicy{ObjectMeta: meta("grpc-server-allow"), Spec: *allow(principal)}
	if _, err := c.Istio.SecurityV1().PeerAuthentications(pxNamespace).Create(ctx, pa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Istio.NetworkingV1().DestinationRules(pxNamespace).Create(ctx, dr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Istio.SecurityV1().AuthorizationPolicies(pxNamespace).Create(ctx, ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func allow(principal string) *securityapi.AuthorizationPolicy {
	return &securityapi.AuthorizationPolicy{Selector: pxSelector, Action: securityapi.AuthorizationPolicy_ALLOW,
		Rules: []*securityapi.Rule{{
			From: []*securityapi.Rule_From{{Source: &securityapi.Source{Principals: []string{principal}}}},
			To:   []*securityapi.Rule_To{{Operation: &securityapi.Operation{Paths: []string{"/proto.EchoTestService/Echo"}}}},
		}}}
}

func setPrincipal(t *testing.T, ctx context.Context, c workload.Clients, principal string) {
	t.Helper()
	ap, err := c.Istio.SecurityV1().AuthorizationPolicies(pxNamespace).Get(ctx, "grpc-server-allow", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ap.Spec.Rules = allow(principal).Rules
	if _, err := c.Istio.SecurityV1().AuthorizationPolicies(pxNamespace).Update(ctx, ap, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func removePolicies(ctx context.Context, c workload.Clients) {
	c.Istio.SecurityV1().PeerAuthentications(pxNamespace).Delete(ctx, "default", metav1.DeleteOptions{})
	c.Istio.NetworkingV1().DestinationRules(pxNamespace).Delete(ctx, "grpc-server", metav1.DeleteOptions{})
	c.Istio.SecurityV1().AuthorizationPolicies(pxNamespace).Delete(ctx, "grpc-server-allow", metav1.DeleteOptions{})
}

// strictMTLS waits until istiod has pushed PeerAuthentication STRICT to the
// server at addr (until then it serves plaintext, as before the policy):
// plaintext and a TLS client without a certificate refused, its certificate
// the identity uri, chained to istiod's root.
func strictMTLS(t *testing.T, ctx context.Context, c workload.Clients, addr, identity string) {
	t.Helper()
	cm, err := c.Kube.CoreV1().ConfigMaps(pxNamespace).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
		t.Fatal("istio-ca-root-cert holds no certificate")
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		r := mtlsprobe.Probe(ctx, addr, roots, 5*time.Second)
		err := r.Enforced(identity)
		if err == nil {
			t.Logf("%s: plaintext refused (%v); TLS without a client certificate refused (%v); certificate %v, chained to istiod's root", addr, r.Plaintext, r.NoCert, r.URIs)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after 90s: %v", addr, err)
		}
		time.Sleep(time.Second)
	}
}

// pxVerify runs verify with the client's call named, and wants it to pass or fail.
func pxVerify(t *testing.T, cfg string, pass bool) []fleet.Verdict {
	t.Helper()
	out, err := run(t, "--config", cfg, "verify", "--grpc-service", "grpc-server."+pxNamespace+":"+fmt.Sprint(pxPort), "-o", "json")
	var vs []fleet.Verdict
	if jerr := json.Unmarshal([]byte(out), &vs); jerr != nil || (err == nil) != pass {
		t.Fatalf("verify: %v (%v), want pass %v:\n%s", err, jerr, pass, out)
	}
	t.Logf("verify --config %s:\n%s", filepath.Base(cfg), out)
	return vs
}

func verdictOf(vs []fleet.Verdict, vm, check string) fleet.Verdict {
	for _, v := range vs {
		if v.VM == vm && v.Check == check {
			return v
		}
	}
	return fleet.Verdict{VM: vm, Check: check, Result: "missing"}
}
