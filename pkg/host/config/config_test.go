package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) string { return "" }

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "meshvm.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreTheRecipe(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "meshvm.yaml"), false, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{c.Istio.MeshID, c.Istio.ClusterName, c.Istio.Network, c.Workload.Namespace, c.Workload.ServiceAccount,
		c.Workload.Group, c.Workload.Network, c.VMs[0].Name, c.VMs[0].Image, c.VMs[0].Memory}
	want := []string{"mesh1", "test", "kube-network", "vmns", "vmsa", "external-app", "vm-network", "vm1", "22.04", "1G"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got %v, want %v", got, want)
	}
	if c.Workload.Port != 8000 || c.Workload.Probe.PeriodSeconds != 5 || c.Workload.Probe.InitialDelaySeconds != 1 || c.Cluster.Agents != 2 {
		t.Errorf("got %+v, want port 8000, probe 5s/1s, 2 agents", c)
	}
	if !filepath.IsAbs(c.StateDir) || filepath.Base(c.StateDir) != ".meshvm" {
		t.Errorf("got state dir %q, want an absolute .meshvm beside the config", c.StateDir)
	}
}

func TestFileThenEnvOverride(t *testing.T) {
	p := write(t, "version: 1\nistio:\n  meshID: prod\nworkload:\n  tokenLifetime: 2h\nvms:\n- name: a\n- name: b\n")
	env := map[string]string{"MESHVM_MESH_ID": "fromenv", "MESHVM_APP_PORT": "9000"}
	c, err := Load(p, true, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.Istio.MeshID != "fromenv" || c.Workload.Port != 9000 || c.Workload.TokenLifetime.Duration != 2*time.Hour || len(c.VMs) != 2 {
		t.Errorf("got mesh %q port %d lifetime %s vms %d, want fromenv 9000 2h 2", c.Istio.MeshID, c.Workload.Port, c.Workload.TokenLifetime, len(c.VMs))
	}
	if c.Istio.ClusterName != "test" {
		t.Errorf("got cluster %q, want the default kept", c.Istio.ClusterName)
	}
}

func TestMachinesFollowTheCluster(t *testing.T) {
	for _, tt := range []struct {
		body string
		want Provider
	}{
		{"version: 1\n", Multipass},
		{"version: 1\ncluster:\n  provider: lab\n", Lab},
		{"version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: k\n", Multipass},
		{"version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: k\nvms:\n- {name: a, address: 10.0.0.2, user: u}\n", SSH},
		{"version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: k\nmachines: lab\n", Lab},
	} {
		c, err := Load(write(t, tt.body), true, noEnv)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.MachineProvider(); got != tt.want {
			t.Errorf("%q: machines %s, want %s", tt.body, got, tt.want)
		}
	}
}

func TestErrorsNameTheFix(t *testing.T) {
	tests := []struct {
		name, body, want string
		env              map[string]string
	}{
		{"unknown field", "version: 1\nistio:\n  meshName: x\n", "unknown field", nil},
		{"bad version", "version: 2\n", "reads version 1", nil},
		{"bad namespace", "version: 1\nworkload:\n  namespace: VM_NS\n", "DNS label", nil},
		{"duplicate vm", "version: 1\nvms:\n- name: vm1\n- name: vm1\n", "appears twice", nil},
		{"ssh without address", "version: 1\ncluster:\n  provider: ssh\n", "need address and user", nil},
		{"unknown machines", "version: 1\nmachines: vagrant\n", "want lab, multipass or ssh", nil},
		{"lab cluster, multipass VMs", "version: 1\ncluster:\n  provider: lab\nmachines: multipass\n", "reachable only from lab VMs", nil},
		{"unknown provider", "version: 1\ncluster:\n  provider: vagrant\n", "want multipass, ssh, lab or kubeconfig", nil},
		{"short token", "version: 1\nworkload:\n  tokenLifetime: 1m\n", "10m minimum", nil},
		{"short certificate", "version: 1\nworkload:\n  certificateLifetime: 30s\n", "shorter than 1m", nil},
		{"multipass name", "version: 1\nvms:\n- name: 1vm\n", "invalid multipass instance name", nil},
		{"bad env number", "version: 1\n", "MESHVM_APP_PORT", map[string]string{"MESHVM_APP_PORT": "eighty"}},
		{"no VM at a time", "version: 1\nparallel: 0\n", "1 or more (default 8)", nil},
		{"no VM at a time from the environment", "version: 1\n", "parallel -2", map[string]string{"MESHVM_PARALLEL": "-2"}},
		{"app not a bool", "version: 1\nworkload:\n  app: maybe\n", "cannot unmarshal", nil}, // the fix is the CLI's to word (reason.ConfigField)
		{"app's port not probed", "version: 1\nworkload:\n  port: 9000\n", "set workload.probe.port to 9000 (or set workload.app: false", nil},
		{"a VM's app's port not probed", "version: 1\nworkload:\n  app: false\n  port: 9000\nvms:\n- {name: a, app: true}\n", "set workload.probe.port to 9000", nil},
		{"kubeconfig provider without file", "version: 1\ncluster:\n  provider: kubeconfig\n", "MESHVM_KUBECONFIG", nil},
		{"unknown istio.install", "version: 1\nistio:\n  install: sometimes\n", "want auto (install where there is no Istio, else join it), always or never", nil},
		{"revision not a DNS label", "version: 1\nistio:\n  revision: Canary_1\n", "a revision is a DNS label", nil},
		{"istiod address not an IP", "version: 1\nistio:\n  istiodAddress: istiod.example\n", "is not an IP address", nil},
		{"unknown sidecar", "version: 1\nworkload:\n  sidecar: linkerd\n", `workload.sidecar "linkerd": want envoy`, nil},
		{"unknown VM sidecar", "version: 1\nworkload:\n  app: false\nvms:\n- {name: a, sidecar: none}\n", `vms[0].sidecar "none": want envoy`, nil},
		{"proxyless with hostctl's app", "version: 1\nvms:\n- {name: a, sidecar: proxyless}\n", "set app: false for it", nil},
		{"lab never installing", "version: 1\ncluster:\n  provider: lab\nistio:\n  install: never\n", "leave istio.install empty", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(write(t, tt.body), true, func(k string) string { return tt.env[k] })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), true, noEnv); err == nil {
		t.Error("an explicitly named missing file gave no error")
	}
}

// The recipe's app is on by default; workload.app turns it off for every VM
// and vms[].app decides for one.
func TestAppPerVMOverridesWorkload(t *testing.T) {
	if d := Default(); !d.RunsApp(d.VMs[0]) {
		t.Error("the default VM runs no app, want the recipe's app")
	}
	c, err := Load(write(t, "version: 1\nworkload:\n  app: false\n  port: 9000\nvms:\n- {name: a}\n- {name: b, app: false}\n"), true, noEnv)
	if err != nil {
		t.Fatalf("app off with an unprobed port: %v, want it accepted (the VM's own app answers the probe)", err)
	}
	if c.RunsApp(c.VMs[0]) || c.RunsApp(c.VMs[1]) {
		t.Errorf("got app on for %+v, want off for both", c.VMs)
	}
	c, err = Load(write(t, "version: 1\nvms:\n- {name: a}\n- {name: b, app: false}\n"), true, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !c.RunsApp(c.VMs[0]) || c.RunsApp(c.VMs[1]) {
		t.Errorf("got a %v, b %v, want a on (workload.app) and b off (its own)", c.RunsApp(c.VMs[0]), c.RunsApp(c.VMs[1]))
	}
	// MESHVM_APP_PORT moves the probe with the app, unless the probe was set apart.
	c, err = Load(write(t, "version: 1\n"), true, func(k string) string { return map[string]string{"MESHVM_APP_PORT": "9000"}[k] })
	if err != nil || c.Workload.Probe.Port != 9000 {
		t.Errorf("MESHVM_APP_PORT=9000: probe port %d, %v, want 9000", c.Workload.Probe.Port, err)
	}
	c, err = Load(write(t, "version: 1\nworkload:\n  app: false\n  probe: {port: 8080}\n"), true, func(k string) string { return map[string]string{"MESHVM_APP_PORT": "9000"}[k] })
	if err != nil || c.Workload.Probe.Port != 8080 {
		t.Errorf("MESHVM_APP_PORT=9000 with probe.port 8080: probe port %d, %v, want 8080 kept", c.Workload.Probe.Port, err)
	}
}

func TestVMLookupNamesKnownVMs(t *testing.T) {
	c := Default()
	if _, err := c.VM("vm2"); err == nil || !strings.Contains(err.Error(), "known: vm1") {
		t.Errorf("got %v, want the known names listed", err)
	}
}

func TestValidRevision(t *testing.T) {
	for rev, want := range map[string]bool{"canary": true, "1-31-0": true, "default": true, "": false, "-a": false, "a-": false,
		"1.31": false, "Canary": false, strings.Repeat("a", 64): false, strings.Repeat("a", 63): true} {
		if got := ValidRevision(rev); got != want {
			t.Errorf("ValidRevision(%q) = %v, want %v", rev, got, want)
		}
	}
}

// SSH addresses are parsed, not split on ':': IPv6, host names with or
// without a dot, and ports are accepted; the rest named.
func TestSSHAddresses(t *testing.T) {
	for _, a := range []string{"10.0.0.7", "10.0.0.7:2222", "fd00::7", "[fd00::7]:22", "vmhost", "vm1.example.com", "vm1.example.com:22"} {
		if err := sshAddress(a); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	for _, a := range []string{"vm_1", "10.0.0.7:0", "10.0.0.7:ssh", "[fd00::7]:99999", "-vm", "a b"} {
		if err := sshAddress(a); err == nil {
			t.Errorf("%s: accepted", a)
		}
	}
	body := "version: 1\nmachines: ssh\nvms:\n- {name: v6, address: 'fd00::7', user: ubuntu}\n- {name: bare, address: vmhost, user: ubuntu}\n"
	if _, err := Load(write(t, body), true, noEnv); err != nil {
		t.Errorf("IPv6 and bare host names: %v", err)
	}
}

// Every problem is named, in the same order on every run.
func TestValidationErrorsInAStableOrder(t *testing.T) {
	body := "version: 1\nworkload:\n  namespace: A\n  serviceAccount: B\n  group: C\n"
	first := ""
	for i := range 20 {
		_, err := Load(write(t, body), true, noEnv)
		if err == nil {
			t.Fatal("no error")
		}
		if i == 0 {
			first = err.Error()
			if !(strings.Index(first, "workload.namespace") < strings.Index(first, "workload.serviceAccount") &&
				strings.Index(first, "workload.serviceAccount") < strings.Index(first, "workload.group")) {
				t.Fatalf("got %q, want namespace, serviceAccount, group in that order", first)
			}
		} else if err.Error() != first {
			t.Fatalf("run %d: got %q, want %q", i, err, first)
		}
	}
}

// workload.sidecar decides for every VM, vms[].sidecar for one.
func TestSidecarPerVMOverridesWorkload(t *testing.T) {
	if d := Default(); d.Proxyless(d.VMs[0]) {
		t.Error("the default VM is proxyless, want Envoy (the recipe's)")
	}
	c, err := Load(write(t, "version: 1\nworkload:\n  app: false\n  sidecar: proxyless\nvms:\n- {name: a}\n- {name: b, sidecar: envoy}\n"), true, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Proxyless(c.VMs[0]) || c.Proxyless(c.VMs[1]) {
		t.Errorf("proxyless %v and %v, want a proxyless and b with Envoy", c.Proxyless(c.VMs[0]), c.Proxyless(c.VMs[1]))
	}
}

func TestFleetModeDefaultsToMeshvmsOwnCluster(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		env        map[string]string
		want       bool
		err        string
	}{
		{name: "the recipe's k3s", body: "version: 1\n", want: true},
		{name: "the lab", body: "version: 1\ncluster:\n  provider: lab\n", want: true},
		{name: "a cluster of yours", body: "version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: kc\nvms:\n- name: a\n  address: 10.0.0.1\n  user: u\n", want: false},
		{name: "yours, turned on", body: "version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: kc\nfleet:\n  enabled: true\nvms:\n- name: a\n  address: 10.0.0.1\n  user: u\n", want: true},
		{name: "the lab, turned off", body: "version: 1\ncluster:\n  provider: lab\nfleet:\n  enabled: false\n", want: false},
		{name: "the environment over the file", body: "version: 1\nfleet:\n  enabled: true\n", env: map[string]string{"MESHVM_FLEET": "false"}, want: false},
		{name: "a proxyless VM keeps it off", body: "version: 1\ncluster:\n  provider: lab\nworkload:\n  app: false\n  sidecar: proxyless\n", want: false},
		{name: "a proxyless VM with it on", body: "version: 1\ncluster:\n  provider: lab\nfleet:\n  enabled: true\nworkload:\n  app: false\n  sidecar: proxyless\n",
			err: "set fleet.enabled: false"},
		{name: "not a boolean", body: "version: 1\n", env: map[string]string{"MESHVM_FLEET": "maybe"}, err: "want true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(write(t, tc.body), true, func(k string) string { return tc.env[k] })
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error saying %q", err, tc.err)
				}
			case err != nil:
				t.Fatal(err)
			case c.Fleet.Enabled == nil || c.FleetMode() != tc.want:
				t.Errorf("fleet.enabled %v, want %v", c.Fleet.Enabled, tc.want)
			}
		})
	}
}
