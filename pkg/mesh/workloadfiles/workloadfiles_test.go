package workloadfiles

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	networking "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/envfile"
)

// istioModule is the pinned istio.io/istio source (the lab's pins), whose
// istioctl goldens this package must reproduce.
func istioModule(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
	cmd.Dir = "../../../lab/toolchain"
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("locate istio.io/istio: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" { // not in the module cache yet: fetch the pinned version
		dl := exec.Command("go", "mod", "download", "istio.io/istio")
		dl.Dir = cmd.Dir
		if out, err := dl.CombinedOutput(); err != nil {
			t.Fatalf("download istio.io/istio: %v\n%s", err, out)
		}
		again := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
		again.Dir = cmd.Dir
		out, _ = again.Output()
		dir = strings.TrimSpace(string(out))
	}
	return dir
}

func readGroup(t *testing.T, path string) Group {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var obj struct {
		Metadata struct {
			Name, Namespace string
			Annotations     map[string]string
		}
		Spec map[string]any
	}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	spec, _ := yaml.Marshal(obj.Spec)
	wg := &networking.WorkloadGroup{}
	if err := applyYAML(string(spec), wg); err != nil {
		t.Fatal(err)
	}
	return Group{Name: obj.Metadata.Name, Namespace: obj.Metadata.Namespace, Annotations: obj.Metadata.Annotations, Spec: wg}
}

func parseEnv(t *testing.T, b []byte) map[string]string {
	t.Helper()
	env := map[string]string{}
	if err := envfile.Parse("cluster.env", b, env); err != nil {
		t.Fatal(err)
	}
	return env
}

// TestMatchesIstioctlGoldens runs the cases istioctl's own tests run
// (istioctl/pkg/workload/testdata/vmconfig) and compares with its goldens:
// mesh.yaml and hosts byte for byte, cluster.env value by value (it quotes
// fewer values than this package does).
func TestMatchesIstioctlGoldens(t *testing.T) {
	base := filepath.Join(istioModule(t), "istioctl/pkg/workload/testdata/vmconfig")
	cases := map[string][2]string{"ipv4": {"10.10.10.10", "10.10.10.11"}, "ipv6": {"fd00:10:96::1", "fd00:10:96::2"}}
	for name, ips := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(base, name)
			mesh, err := os.ReadFile(filepath.Join(dir, "meshconfig.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			files, err := Generate(Options{
				Mesh: string(mesh), Group: readGroup(t, filepath.Join(dir, "workloadgroup.yaml")),
				Revision: "rev-1", ClusterID: "Kubernetes", DNSCapture: true,
				InternalIP: ips[0], IstiodIP: ips[1], RootCert: []byte("root"), Token: []byte("token"),
			})
			if err != nil {
				t.Fatal(err)
			}
			for file, got := range map[string][]byte{"mesh.yaml": files.Mesh, "hosts": files.Hosts} {
				want, err := os.ReadFile(filepath.Join(dir, file+".golden"))
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(string(want), string(got)); diff != "" {
					t.Errorf("%s differs from istioctl's (-istioctl +ours):\n%s", file, diff)
				}
			}
			want, _ := os.ReadFile(filepath.Join(dir, "cluster.env.golden"))
			wantEnv := parseEnv(t, want)
			for k, v := range TokenOnly() { // deliberately beyond istioctl's
				wantEnv[k] = v
			}
			// Its group has no ports, so every inbound port is captured:
			// deliberately, the agent's is not.
			wantEnv["ISTIO_LOCAL_EXCLUDE_PORTS"] += ",7443"
			if diff := cmp.Diff(wantEnv, parseEnv(t, files.ClusterEnv)); diff != "" {
				t.Errorf("cluster.env differs from istioctl's (-istioctl +ours):\n%s", diff)
			}
		})
	}
}

func TestRecipeDefaults(t *testing.T) {
	spec := &networking.WorkloadGroup{
		Metadata: &networking.WorkloadGroup_ObjectMeta{Labels: map[string]string{"app": "external-app"}},
		Template: &networking.WorkloadEntry{ServiceAccount: "vmsa", Network: "vm-network", Ports: map[string]uint32{"http": 8000}},
		Probe:    &networking.ReadinessProbe{PeriodSeconds: 5, InitialDelaySeconds: 1, HealthCheckMethod: &networking.ReadinessProbe_HttpGet{HttpGet: &networking.HTTPHealthCheckConfig{Path: "/", Port: 8000}}},
	}
	mesh := "trustDomain: cluster.local\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n  meshId: mesh1\n"
	f, err := Generate(Options{Mesh: mesh, Group: Group{Name: "external-app", Namespace: "vmns", Spec: spec},
		ClusterID: "test", AutoRegister: true, DNSCapture: true, ExternalIP: "10.213.0.2", IstiodIP: "10.213.0.1",
		RootCert: []byte("r"), Token: []byte("t")})
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, f.ClusterEnv)
	want := map[string]string{
		"ISTIO_META_AUTO_REGISTER_GROUP": "external-app", "ISTIO_META_CLUSTER_ID": "test", "ISTIO_META_MESH_ID": "mesh1",
		"ISTIO_META_NETWORK": "vm-network", "ISTIO_INBOUND_PORTS": "8000", "ISTIO_SVC_IP": "10.213.0.2",
		"REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION": "true", "TRUST_DOMAIN": "cluster.local",
		"ISTIO_META_POD_PORTS":  `[{"name":"http","containerPort":8000,"protocol":""}]`,
		"ISTIO_METAJSON_LABELS": `{"app":"external-app","service.istio.io/canonical-name":"external-app","service.istio.io/canonical-revision":"latest"}`,
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s: got %q, want %q", k, env[k], v)
		}
	}
	if string(f.Hosts) != "10.213.0.1 istiod.istio-system.svc\n" {
		t.Errorf("hosts: got %q", f.Hosts)
	}
	if !strings.Contains(string(f.Mesh), "periodSeconds: 5") || !strings.Contains(string(f.Mesh), "ISTIO_META_AUTO_REGISTER_GROUP: external-app") {
		t.Errorf("mesh.yaml lacks the probe or autoregistration:\n%s", f.Mesh)
	}
}

func TestRefusals(t *testing.T) {
	spec := &networking.WorkloadGroup{Template: &networking.WorkloadEntry{ServiceAccount: "sa"}}
	ok := Options{Group: Group{Name: "g", Namespace: "ns", Spec: spec}, IstiodIP: "10.0.0.1", RootCert: []byte("r"), Token: []byte("t")}
	tests := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no istiod address: never an empty hosts file", func(o *Options) { o.IstiodIP = "" }, "east-west gateway has no external address"},
		{"both IPs", func(o *Options) { o.InternalIP, o.ExternalIP = "1.1.1.1", "2.2.2.2" }, "not both"},
		{"no root cert", func(o *Options) { o.RootCert = nil }, "istio-ca-root-cert"},
		{"no template", func(o *Options) { o.Group.Spec = &networking.WorkloadGroup{} }, "spec.template"},
		{"bad mesh", func(o *Options) { o.Mesh = "defaultConfig: [" }, "mesh config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.edit(&o)
			if _, err := Generate(o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestGroupWithoutPorts keeps the agent's port out of the capture: with no
// ports, ISTIO_INBOUND_PORTS is "*" and would take 7443 too.
func TestGroupWithoutPorts(t *testing.T) {
	spec := &networking.WorkloadGroup{Template: &networking.WorkloadEntry{ServiceAccount: "sa"}}
	o := Options{Group: Group{Name: "g", Namespace: "ns", Spec: spec}, IstiodIP: "10.0.0.1", RootCert: []byte("r"), Token: []byte("t")}
	f, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, f.ClusterEnv)
	if env["ISTIO_INBOUND_PORTS"] != "*" || env["ISTIO_LOCAL_EXCLUDE_PORTS"] != "22,15090,15021,15020,7443" {
		t.Errorf("inbound %q, excluded %q: want every port but 22,15090,15021,15020,7443", env["ISTIO_INBOUND_PORTS"], env["ISTIO_LOCAL_EXCLUDE_PORTS"])
	}
	o.Group.Spec = &networking.WorkloadGroup{Template: &networking.WorkloadEntry{ServiceAccount: "sa", Ports: map[string]uint32{"http": 8000}}}
	if f, err = Generate(o); err != nil {
		t.Fatal(err)
	}
	if env := parseEnv(t, f.ClusterEnv); env["ISTIO_LOCAL_EXCLUDE_PORTS"] != "22,15090,15021,15020" {
		t.Errorf("with ports listed, excluded %q: want istioctl's", env["ISTIO_LOCAL_EXCLUDE_PORTS"])
	}
}

// TestProxyless writes what Istio's grpc-agent template sets: no Envoy, the
// gRPC generator, no DNS capture, and certificates at an absolute path the
// gRPC bootstrap can name.
func TestProxyless(t *testing.T) {
	spec := &networking.WorkloadGroup{Template: &networking.WorkloadEntry{ServiceAccount: "grpc-server", Ports: map[string]uint32{"grpc": 7070}}}
	o := Options{Group: Group{Name: "grpc-server", Namespace: "vmns", Spec: spec}, IstiodIP: "10.0.0.1", RootCert: []byte("r"), Token: []byte("t"),
		DNSCapture: true, AutoRegister: true}
	f, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	if env := parseEnv(t, f.ClusterEnv); env["ISTIO_META_DNS_CAPTURE"] != "true" || env["DISABLE_ENVOY"] != "" {
		t.Fatalf("with Envoy: DNS capture %q, DISABLE_ENVOY %q", env["ISTIO_META_DNS_CAPTURE"], env["DISABLE_ENVOY"])
	}
	o.Proxyless = true
	if f, err = Generate(o); err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, f.ClusterEnv)
	want := map[string]string{"DISABLE_ENVOY": "true", "ISTIO_META_GENERATOR": "grpc", "OUTPUT_CERTS": "/etc/certs",
		"GRPC_XDS_BOOTSTRAP": "/etc/istio/proxy/grpc-bootstrap.json", "ISTIO_META_DNS_CAPTURE": "", "ISTIO_META_AUTO_REGISTER_GROUP": "grpc-server"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s: got %q, want %q", k, env[k], v)
		}
	}
	if strings.Contains(string(f.Mesh), "DNS_CAPTURE") {
		t.Errorf("mesh.yaml turns DNS capture on:\n%s", f.Mesh)
	}
}

// The VM's name rides in the proxy's labels (istiod copies them onto the
// entry it autoregisters), its certificate lifetime in SECRET_TTL (over the
// group's annotation), and the follow marker in cluster.env; a name no
// label can hold is left out rather than making istiod refuse the entry.
func TestVMIdentityAndLifetime(t *testing.T) {
	spec := &networking.WorkloadGroup{Template: &networking.WorkloadEntry{ServiceAccount: "sa"}}
	group := Group{Name: "g", Namespace: "ns", Spec: spec,
		Annotations: map[string]string{"proxy.istio.io/config": "proxyMetadata:\n  SECRET_TTL: 24h0m0s\n"}}
	o := Options{Group: group, IstiodIP: "10.0.0.1", ExternalIP: "10.0.0.2", RootCert: []byte("r"), Token: []byte("t"),
		VM: "vm-1", CertificateLifetime: 90 * time.Second, FollowAddress: true}
	f, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(t, f.ClusterEnv)
	var labels map[string]string
	if err := json.Unmarshal([]byte(env["ISTIO_METAJSON_LABELS"]), &labels); err != nil || labels[VMLabel] != "vm-1" {
		t.Errorf("labels %q (%v), want %s=vm-1", env["ISTIO_METAJSON_LABELS"], err, VMLabel)
	}
	if env["SECRET_TTL"] != "1m30s" || env[agentspec.FollowAddressKey] != "true" {
		t.Errorf("SECRET_TTL %q, %s %q", env["SECRET_TTL"], agentspec.FollowAddressKey, env[agentspec.FollowAddressKey])
	}
	if !strings.Contains(string(f.Mesh), "SECRET_TTL: 1m30s") || !strings.Contains(string(f.Mesh), `meshvm.io/vm":"vm-1"`) {
		t.Errorf("mesh.yaml lacks the lifetime or the label:\n%s", f.Mesh)
	}

	o.VM, o.CertificateLifetime, o.FollowAddress = strings.Repeat("v", 64), 0, false
	if f, err = Generate(o); err != nil {
		t.Fatal(err)
	}
	env = parseEnv(t, f.ClusterEnv)
	if strings.Contains(env["ISTIO_METAJSON_LABELS"], VMLabel) || env["SECRET_TTL"] != "24h0m0s" {
		t.Errorf("labels %q, SECRET_TTL %q: want no VM label (too long) and the group's lifetime", env["ISTIO_METAJSON_LABELS"], env["SECRET_TTL"])
	}
	if _, set := env[agentspec.FollowAddressKey]; set {
		t.Errorf("%s set without FollowAddress", agentspec.FollowAddressKey)
	}
}
