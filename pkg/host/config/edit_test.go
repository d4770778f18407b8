package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func load(t *testing.T, path string) Config {
	t.Helper()
	c, err := Load(path, true, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func names(c Config) string {
	var n []string
	for _, vm := range c.VMs {
		n = append(n, vm.Name)
	}
	return strings.Join(n, ",")
}

func TestAddRemoveVMKeepsComments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshvm.yaml")
	orig := "version: 1\n# the VMs we run\nvms:\n  - name: vm1 # first\n    cpus: 2\nworkload:\n  port: 8080\n  probe: {port: 8080}\n"
	os.WriteFile(path, []byte(orig), 0o640)

	changed, err := AddVM(path, VM{Name: "vm2"}, nil)
	if err != nil || !changed {
		t.Fatalf("AddVM: %v, %v", changed, err)
	}
	if changed, err := AddVM(path, VM{Name: "vm2"}, nil); err != nil || changed {
		t.Fatalf("AddVM again: changed=%v, %v; want no change", changed, err)
	}
	data, _ := os.ReadFile(path)
	for _, want := range []string{"# the VMs we run", "# first", "port: 8080"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("edited file lost %q:\n%s", want, data)
		}
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's own 0640", st.Mode())
	}
	if c := load(t, path); names(c) != "vm1,vm2" || c.VMs[0].CPUs != 2 || c.Workload.Port != 8080 {
		t.Errorf("after add: %s %+v", names(c), c.VMs)
	}

	if changed, err := RemoveVM(path, "vm1"); err != nil || !changed {
		t.Fatalf("RemoveVM: %v, %v", changed, err)
	}
	if c := load(t, path); names(c) != "vm2" {
		t.Errorf("after remove: %s", names(c))
	}
	// The last VM stays listed: a config without VMs does not load.
	if changed, err := RemoveVM(path, "vm2"); err != nil || changed {
		t.Errorf("RemoveVM of the last VM: changed=%v, %v", changed, err)
	}
}

func TestAddVMToDefaults(t *testing.T) {
	dir := t.TempDir()
	// No file at all: the default VM is kept beside the new one.
	path := filepath.Join(dir, "meshvm.yaml")
	if _, err := AddVM(path, VM{Name: "vm2"}, Default().VMs); err != nil {
		t.Fatal(err)
	}
	if c := load(t, path); names(c) != "vm1,vm2" {
		t.Errorf("new file: %s", names(c))
	}
	// A file without vms: the same.
	os.WriteFile(path, []byte("version: 1\nistio:\n  meshID: m\n"), 0o600)
	if _, err := AddVM(path, VM{Name: "extra"}, Default().VMs); err != nil {
		t.Fatal(err)
	}
	if c := load(t, path); names(c) != "vm1,extra" || c.Istio.MeshID != "m" {
		t.Errorf("file without vms: %s, mesh %s", names(c), c.Istio.MeshID)
	}
}

// A VM added with its own app keeps app: false in the file.
func TestAddVMKeepsApp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshvm.yaml")
	off := false
	if _, err := AddVM(path, VM{Name: "own", App: &off}, Default().VMs); err != nil {
		t.Fatal(err)
	}
	c := load(t, path)
	if names(c) != "vm1,own" || !c.RunsApp(c.VMs[0]) || c.RunsApp(c.VMs[1]) {
		data, _ := os.ReadFile(path)
		t.Errorf("got %s with app %v/%v, want vm1 (app on) and own (app off):\n%s", names(c), c.RunsApp(c.VMs[0]), c.RunsApp(c.VMs[1]), data)
	}
}

func TestEditRefusesBrokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshvm.yaml")
	os.WriteFile(path, []byte("- just\n- a list\n"), 0o600)
	if _, err := AddVM(path, VM{Name: "vm2"}, nil); err == nil || !strings.Contains(err.Error(), "not a YAML mapping: fix it first") {
		t.Errorf("got %v", err)
	}
	os.WriteFile(path, []byte("vms: [\n"), 0o600)
	if _, err := AddVM(path, VM{Name: "vm2"}, nil); err == nil || !strings.Contains(err.Error(), "fix the YAML first") {
		t.Errorf("got %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "vms: [\n" {
		t.Errorf("a refused edit changed the file: %q", data)
	}
}
