package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/host/config"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := New()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestConfigShow(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\nworkload:\n  namespace: apps\n"), 0o600)
	t.Setenv("MESHVM_MESH_ID", "meshX")
	out, err := run(t, "--config", p, "config", "show", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Istio    struct{ MeshID string }
		Workload struct{ Namespace, Group string }
		StateDir string
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if got.Istio.MeshID != "meshX" || got.Workload.Namespace != "apps" || got.Workload.Group != "external-app" || got.StateDir != filepath.Join(dir, ".meshvm") {
		t.Errorf("got %+v, want env, file and defaults merged", got)
	}
	out, err = run(t, "--config", p, "config", "show")
	if err != nil || !strings.Contains(out, "namespace: apps") {
		t.Errorf("yaml: got %q, %v", out, err)
	}
	if _, err := run(t, "--config", filepath.Join(dir, "missing.yaml"), "config", "show"); err == nil {
		t.Error("an explicit missing config gave no error")
	}
	if _, err := run(t, "--config", p, "config", "show", "-o", "xml"); err == nil || !strings.Contains(err.Error(), "want yaml|json") {
		t.Errorf("got %v, want the output formats named", err)
	}
}

// Without Multipass (the default provider) or a cluster, each command names
// what is missing and the way out; k3s on SSH nodes says it is not built.
func TestMissingPartsNameTheFix(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no multipass
	dir := t.TempDir()
	p := filepath.Join(dir, "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\n"), 0o600)
	for args, want := range map[string][]string{
		"up":        {"multipass not found", "--provider lab"},
		"down":      {"multipass not found", "--provider lab"},
		"vm status": {"no kubeconfig at", "run hostctl up"},
	} {
		_, err := run(t, append([]string{"--config", p}, strings.Fields(args)...)...)
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: got %v, want an error containing %q", args, err, w)
			}
		}
	}
	ssh := filepath.Join(dir, "ssh.yaml")
	os.WriteFile(ssh, []byte("version: 1\ncluster:\n  provider: ssh\nvms:\n- {name: vm1, address: 10.0.0.2, user: ubuntu}\n"), 0o600)
	if _, err := run(t, "--config", ssh, "up"); err == nil || !strings.Contains(err.Error(), "needs cluster.nodes") {
		t.Errorf("k3s on ssh nodes without nodes: got %v, want cluster.nodes asked for", err)
	}
	two := filepath.Join(dir, "two.yaml")
	os.WriteFile(two, []byte("version: 1\ncluster:\n  servers: 3\n"), 0o600)
	if _, err := run(t, "--config", two, "up"); err == nil || !strings.Contains(err.Error(), "set it to 1") {
		t.Errorf("three k3s servers: got %v, want the fix named", err)
	}
}

func TestUpRefusesAnotherIstioVersion(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\ncluster:\n  provider: lab\nistio:\n  version: 1.24.2\n"), 0o600)
	_, err := run(t, "--config", p, "up")
	if err == nil || !strings.Contains(err.Error(), "istio.version 1.24.2") || !strings.Contains(err.Error(), "leave istio.version empty") {
		t.Errorf("got %v, want the version refused with the fix", err)
	}
	// On a cluster of yours another version needs istioctl of that version.
	t.Setenv("PATH", t.TempDir())
	os.WriteFile(p, []byte("version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: /nonexistent\nistio:\n  version: 1.24.2\n"), 0o600)
	_, err = run(t, "--config", p, "up")
	if err == nil || !strings.Contains(err.Error(), "istioctl of that version on PATH") || !strings.Contains(err.Error(), "releases/tag/1.24.2") {
		t.Errorf("got %v, want istioctl 1.24.2 asked for", err)
	}
}

// vm add takes an SSH machine's details as flags, refuses it without them,
// and lists it with them before bringing it up.
func TestVMAddSSHMachine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: /nonexistent\nmachines: ssh\nvms:\n- {name: vm1, address: 10.0.0.2, user: ubuntu}\n"), 0o600)
	if _, err := run(t, "--config", p, "vm", "add", "vm2"); err == nil || !strings.Contains(err.Error(), "need address and user") {
		t.Errorf("without --address/--user: got %v", err)
	}
	if b, _ := os.ReadFile(p); strings.Contains(string(b), "vm2") {
		t.Errorf("a refused VM was listed:\n%s", b)
	}
	_, err := run(t, "--config", p, "vm", "add", "vm2", "--address", "10.0.0.3", "--user", "ubuntu", "--key", "/keys/id")
	if err == nil || !strings.Contains(err.Error(), "no kubeconfig at /nonexistent") {
		t.Errorf("with no cluster: got %v, want the missing kubeconfig named", err)
	}
	cfg, err := config.Load(p, true, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if vm, err := cfg.VM("vm2"); err != nil || vm.Address != "10.0.0.3" || vm.User != "ubuntu" || vm.Key != "/keys/id" {
		t.Errorf("vm2 listed as %+v, %v", vm, err)
	}
}

// config show prints every field of the configuration with its value, zero
// values included (istio.install auto, an empty istio.revision, no
// cluster.nodes), in JSON and YAML alike, as containerd config default
// does; what it prints reads back as the same configuration.
func TestConfigShowEveryField(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\n"), 0o600)
	want, err := config.Load(p, true, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"json", "yaml"} {
		out, err := run(t, "--config", p, "config", "show", "-o", format)
		if err != nil {
			t.Fatal(err)
		}
		var shown map[string]any
		if err := yaml.Unmarshal([]byte(out), &shown); err != nil {
			t.Fatalf("%s: %v\n%s", format, err, out)
		}
		for _, f := range jsonFields(reflect.TypeFor[config.Config](), "") {
			if !has(shown, strings.Split(f, ".")) {
				t.Errorf("%s: field %s not shown:\n%s", format, f, out)
			}
		}
		if istio, _ := shown["istio"].(map[string]any); istio["install"] != "auto" {
			t.Errorf("%s: istio.install %v, want auto", format, istio["install"])
		}
		back := filepath.Join(dir, "shown."+format)
		os.WriteFile(back, []byte(out), 0o600)
		got, err := config.Load(back, true, func(string) string { return "" })
		if err != nil {
			t.Fatalf("%s: what config show printed does not load: %v", format, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: loaded back (-want +got):\n%s", format, diff)
		}
	}
	// Listing a VM edits the user's file: it writes that VM, not the defaults.
	if _, err := config.AddVM(p, config.VM{Name: "vm2", Address: "10.0.0.3", User: "ubuntu"}, want.VMs); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); strings.Contains(string(b), "install") || strings.Contains(string(b), "key") || !strings.Contains(string(b), "vm2") {
		t.Errorf("vm add wrote more than the VM:\n%s", b)
	}
}

// jsonFields are the dotted JSON names of t's fields, inner ones included;
// a slice's are those of its elements (vms.name).
func jsonFields(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[config.Duration]() {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			out = append(out, jsonFields(f.Type, prefix)...)
			continue
		}
		out = append(out, prefix+name)
		out = append(out, jsonFields(f.Type, prefix+name+".")...)
	}
	return out
}

// has says whether path is a key in v, looking into every element of a
// list; an empty list (null) has none to show.
func has(v any, path []string) bool {
	switch v := v.(type) {
	case nil:
		return true
	case map[string]any:
		inner, ok := v[path[0]]
		return ok && (len(path) == 1 || has(inner, path[1:]))
	case []any:
		for _, e := range v {
			if !has(e, path) {
				return false
			}
		}
		return true
	}
	return false
}

// logOutput keeps a command's output for the test's log when the test
// fails, printed after the failure: CI keeps the head and tail of a long
// log, and a failure message buried behind pages of progress lines is cut.
func logOutput(t *testing.T, what, out string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s:\n%s", what, out)
		}
	})
}
