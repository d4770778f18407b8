package sidecarenv

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/capture"
	"github.com/meshvm/meshvm/vmagent/internal/postinst"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

func TestComputeMatchesIstioStart(t *testing.T) {
	host := Host{Hostname: "vm1", FirstIP: "10.0.0.7", ProxyUID: 999, ProxyGID: 998}
	tests := []struct {
		name  string
		files map[string]string
		want  map[string]string
	}{
		{"defaults", map[string]string{},
			map[string]string{"INSTANCE_IP": "10.0.0.7", "POD_NAME": "vm1", "POD_NAMESPACE": "default",
				"CA_ADDR": "istiod.istio-system.svc:15012", "PROV_CERT": "./etc/certs", "OUTPUT_CERTS": "./etc/certs",
				"PROXY_CONFIG": `{serviceCluster: "rawvm", controlPlaneAuthPolicy: MUTUAL_TLS}`, "PROXY_UID": "999", "PROXY_GID": "998"}},
		{"cluster.env values win", map[string]string{"ISTIO_SVC_IP": "192.0.2.5", "ISTIO_NAMESPACE": "vmns", "ISTIO_SERVICE": "external-app.vmns"},
			map[string]string{"INSTANCE_IP": "192.0.2.5", "POD_NAMESPACE": "vmns",
				"PROXY_CONFIG": `{serviceCluster: "external-app.vmns", controlPlaneAuthPolicy: MUTUAL_TLS}`}},
		{"revisioned CA_ADDR kept", map[string]string{"CA_ADDR": "istiod-canary.istio-system.svc:15012"},
			map[string]string{"CA_ADDR": "istiod-canary.istio-system.svc:15012"}},
		{"custom pilot port", map[string]string{"ISTIO_PILOT_PORT": "15013", "ISTIO_SYSTEM_NAMESPACE": "mesh"},
			map[string]string{"CA_ADDR": "istiod.mesh.svc:15013", "PROXY_CONFIG": `{discoveryAddress: "istiod.mesh.svc:15013"}`}},
		{"empty PROV_CERT is kept empty", map[string]string{"PROV_CERT": ""},
			map[string]string{"PROV_CERT": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Compute(tt.files, host)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if env[k] != v {
					t.Errorf("%s: got %q, want %q", k, env[k], v)
				}
			}
		})
	}
}

func TestComputeRefusals(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		host  Host
		want  string
	}{
		{"tproxy", map[string]string{"ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY"}, Host{FirstIP: "10.0.0.1"}, "use REDIRECT"},
		{"no address", map[string]string{}, Host{}, "set ISTIO_SVC_IP"},
		{"multi-line proxy config", map[string]string{"PROXY_CONFIG": "a: 1\nb: 2"}, Host{FirstIP: "10.0.0.1"}, "one line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Compute(tt.files, tt.host); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestPrepareRestoresTokenAndWritesEnv runs Prepare against a sandbox root.
// pilot-agent's istio-iptables is recorded instead of run here: the real
// rules are exercised in the lab VM, where the kernel state is the VM's own.
func TestPrepareRestoresTokenAndWritesEnv(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\nISTIO_NAMESPACE='vmns'\n")
	os.WriteFile(filepath.Join(dir, "var/lib/meshvm/secrets/istio-token"), []byte("tok"), 0o600)

	root, _ := fsroot.New(dir)
	var calls [][]string
	var iptablesEnv []string
	p := &Preparer{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Root: root, Users: sysusers.New(root),
		Run: func(_ context.Context, env []string, name string, args ...string) error {
			calls = append(calls, append([]string{name}, args...))
			iptablesEnv = env
			return nil
		},
	}
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "run/secrets/tokens/istio-token")
	if b, err := os.ReadFile(tok); err != nil || string(b) != "tok" {
		t.Fatalf("got %q, %v, want the token restored under /run", b, err)
	}
	if st, _ := os.Stat(tok); st.Mode().Perm() != 0o600 {
		t.Errorf("got token mode %v, want 0600", st.Mode())
	}
	got := []string{}
	for _, c := range calls {
		got = append(got, strings.Join(c, " "))
	}
	want := []string{"/usr/local/bin/pilot-agent istio-iptables --cleanup-only", "/usr/local/bin/pilot-agent istio-iptables"}
	if !slices.Equal(got, want) {
		t.Errorf("got commands %q, want %q", got, want)
	}
	if !slices.Contains(iptablesEnv, "PROXY_UID=1337") || !slices.Contains(iptablesEnv, "PROXY_GID=1338") {
		t.Errorf("istio-iptables env lacks the proxy ids: %v", iptablesEnv)
	}
	data, err := os.ReadFile(filepath.Join(dir, postinst.SidecarEnvPath))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	if err := envfile.Parse("sidecar.env", data, env); err != nil {
		t.Fatal(err)
	}
	if env["INSTANCE_IP"] != "10.9.0.2" || env["POD_NAMESPACE"] != "vmns" {
		t.Errorf("got INSTANCE_IP=%q POD_NAMESPACE=%q, want 10.9.0.2 and vmns", env["INSTANCE_IP"], env["POD_NAMESPACE"])
	}

	// Without cluster.env the unit fails with the fix named.
	os.Remove(filepath.Join(dir, "var/lib/meshvm/secrets/cluster.env"))
	if err := p.Prepare(context.Background()); err == nil || !strings.Contains(err.Error(), "hostctl vm onboard") {
		t.Errorf("got %v, want an error naming hostctl vm onboard", err)
	}
}

// A proxyless sidecar (DISABLE_ENVOY=true) gets no capture rules: its start
// only removes what an earlier start with Envoy left, and runs no validator.
func TestPrepareProxylessInstallsNoRules(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\nDISABLE_ENVOY='true'\n")
	root, _ := fsroot.New(dir)
	var calls []string
	validated := false
	p := &Preparer{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Root: root, Users: sysusers.New(root), AgentPort: 7443,
		Run: func(_ context.Context, _ []string, name string, args ...string) error {
			calls = append(calls, strings.Join(append([]string{name}, args...), " "))
			return nil
		},
		ReadRules: func(context.Context) capture.Saves { return capture.Saves{} },
		Validate: func(context.Context, int, int, map[string]string) capture.Validation {
			validated = true
			return capture.Validation{}
		},
	}
	if err := p.Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/local/bin/pilot-agent istio-iptables --cleanup-only"}; !slices.Equal(calls, want) || validated {
		t.Errorf("got commands %q (validated %v), want only %q", calls, validated, want)
	}
}

// The agent's replies are exempted from the capture in the iptables that
// istio-iptables used (here: legacy), once, and the exemption goes on stop.
func TestAgentExemptionFollowsTheCaptureBackend(t *testing.T) {
	dir := sandbox(t, "ISTIO_SVC_IP='10.9.0.2'\n")
	os.MkdirAll(filepath.Join(dir, "usr/sbin"), 0o755)
	for _, tool := range []string{"iptables-legacy", "iptables-nft"} {
		os.WriteFile(filepath.Join(dir, "usr/sbin", tool), nil, 0o755)
	}
	root, _ := fsroot.New(dir)
	present := false // the legacy OUTPUT rule
	var changes []string
	p := &Preparer{
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Root: root, Users: sysusers.New(root), AgentPort: 7443,
		Run: func(_ context.Context, _ []string, name string, args ...string) error {
			cmd := name + " " + strings.Join(args, " ")
			switch {
			case name == pilotAgent:
				return nil
			case strings.Contains(cmd, "-S ISTIO_OUTPUT"):
				if strings.HasSuffix(name, "-legacy") {
					return nil
				}
				return errors.New("no chain")
			case strings.Contains(cmd, " -C "):
				if present && strings.HasSuffix(name, "-legacy") {
					return nil
				}
				return errors.New("no rule")
			case strings.Contains(cmd, " -I "):
				present = true
			case strings.Contains(cmd, " -D "):
				present = false
			}
			changes = append(changes, cmd)
			return nil
		},
	}
	for range 2 {
		if err := p.Prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"/usr/sbin/iptables-legacy -w -t nat -I OUTPUT 1 -p tcp --sport 7443 -j RETURN"}
	if !slices.Equal(changes, want) {
		t.Errorf("prepare twice: got %q, want %q", changes, want)
	}
	changes = nil
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	want = []string{"/usr/sbin/iptables-legacy -w -t nat -D OUTPUT -p tcp --sport 7443 -j RETURN"}
	if !slices.Equal(changes, want) || present {
		t.Errorf("cleanup: got %q, want %q", changes, want)
	}
}

// sandbox is a VM root as Install and delivery leave it: istio-proxy's
// /var/lib/istio/envoy holding cluster.env, and vmfiles' root-only copy of it.
func sandbox(t *testing.T, clusterEnv string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: root-side reads take only root's files")
	}
	dir := t.TempDir()
	for _, d := range []string{"etc", "var/lib/istio/envoy", "run", "usr/local/bin"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.MkdirAll(filepath.Join(dir, "var/lib/meshvm/secrets"), 0o700)
	os.Symlink("/run", filepath.Join(dir, "var/run"))
	os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("istio-proxy:x:1337:1338::/var/lib/istio:/usr/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "etc/group"), []byte("istio-proxy:x:1338:\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "var/lib/istio/envoy/cluster.env"), []byte(clusterEnv), 0o644)
	os.Chown(filepath.Join(dir, "var/lib/istio/envoy"), 1337, 1338)
	os.WriteFile(filepath.Join(dir, "var/lib/meshvm/secrets/cluster.env"), []byte(clusterEnv), 0o600)
	return dir
}

// A VM that moved starts its proxy at the address it has now, when the
// files say their address is the VM's own; a NAT'd address (no marker), an
// address the VM still holds, or unknown interfaces leave it as written.
func TestComputeFollowsAMovedVM(t *testing.T) {
	moved := Host{Hostname: "vm1", FirstIP: "10.0.1.2", Addresses: []string{"10.0.1.2", "fd00::2"}}
	tests := []struct {
		name  string
		files map[string]string
		host  Host
		want  string
	}{
		{"moved", map[string]string{"ISTIO_SVC_IP": "10.0.0.2", agentspec.FollowAddressKey: "true"}, moved, "10.0.1.2"},
		{"still there", map[string]string{"ISTIO_SVC_IP": "fd00:0::2", agentspec.FollowAddressKey: "true"}, moved, "fd00:0::2"},
		{"NAT'd, no marker", map[string]string{"ISTIO_SVC_IP": "203.0.113.9"}, moved, "203.0.113.9"},
		{"interfaces unknown", map[string]string{"ISTIO_SVC_IP": "10.0.0.2", agentspec.FollowAddressKey: "true"}, Host{Hostname: "vm1", FirstIP: "10.0.1.2"}, "10.0.0.2"},
	}
	for _, tt := range tests {
		env, err := Compute(tt.files, tt.host)
		if err != nil {
			t.Fatal(err)
		}
		if env["INSTANCE_IP"] != tt.want || env["ISTIO_SVC_IP"] != tt.want {
			t.Errorf("%s: INSTANCE_IP %q, ISTIO_SVC_IP %q, want %q", tt.name, env["INSTANCE_IP"], env["ISTIO_SVC_IP"], tt.want)
		}
	}
}
