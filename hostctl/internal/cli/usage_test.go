package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/host/fleet"
)

// A mistake in the command line or config exits 2 and says where to look;
// a failure exits 1; help and success exit 0.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: /nonexistent\n"), 0o600)
	broken := filepath.Join(dir, "broken.yaml")
	os.WriteFile(broken, []byte("version: 1\nworkload:\n  namspace: apps\n"), 0o600)
	for _, tc := range []struct {
		args string
		code int
		want string
	}{
		{"config show", 0, ""},
		{"vm", 0, ""},
		{"--bogus", ExitUsage, "unknown flag: --bogus"},
		{"frob", ExitUsage, `unknown command "frob" for "hostctl"`},
		{"vm frob", ExitUsage, `unknown command "frob" for "hostctl vm" (see hostctl vm --help)`},
		{"vm stauts", ExitUsage, "did you mean start or status?"},
		{"vm logs", ExitUsage, "accepts 1 arg(s), received 0 (see hostctl vm logs --help)"},
		{"vm status -o xml", ExitUsage, `--output "xml": want table|json|yaml`},
		{"vm status nosuch", ExitUsage, `no VM named "nosuch" in the config (known: vm1)`},
		{"vm logs vm1 --source dmesg", ExitUsage, "want journal, proxy or proxy-err"},
		{"--config " + broken + " config show", ExitUsage, "fix the field"},
		{"--provider cloud config show", ExitUsage, `cluster.provider "cloud"`},
		{"vm status", ExitFailed, "no kubeconfig at /nonexistent"},
		{"vm onboard vm1", ExitFailed, "istiod is not ready (no kubeconfig at /nonexistent"},
		{"--kubeconfig " + broken + " vm status", ExitFailed, "fix the file, or point cluster.kubeconfig (--kubeconfig) at another"},
	} {
		args := strings.Fields(tc.args)
		if !strings.HasPrefix(tc.args, "--config") {
			args = append([]string{"--config", p}, args...)
		}
		_, err := run(t, args...)
		if got := ExitCode(err); got != tc.code {
			t.Errorf("hostctl %s: exit %d (%v), want %d", tc.args, got, err, tc.code)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("hostctl %s: got %v, want %q", tc.args, err, tc.want)
		}
	}
}

// --kubeconfig alone means the existing cluster it reaches.
func TestKubeconfigFlag(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	out, err := run(t, "--kubeconfig", "admin.conf", "config", "show", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	want := `"provider": "kubeconfig"`
	if !strings.Contains(out, want) || !strings.Contains(out, `"kubeconfig": "`+filepath.Join(dir, "admin.conf")+`"`) {
		t.Errorf("got\n%s\nwant %s and the kubeconfig's absolute path", out, want)
	}
	_, err = run(t, "--kubeconfig", "admin.conf", "vm", "status")
	if err == nil || !strings.Contains(err.Error(), "no kubeconfig at "+filepath.Join(dir, "admin.conf")) {
		t.Errorf("vm status: got %v, want the missing kubeconfig named", err)
	}
	// --provider wins over what --kubeconfig implies.
	out, err = run(t, "--kubeconfig", "admin.conf", "--provider", "lab", "config", "show")
	if err != nil || !strings.Contains(out, "provider: lab") {
		t.Errorf("got %v\n%s\nwant provider lab", err, out)
	}
}

func TestCompletion(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\nvms:\n- {name: web1}\n- {name: web2}\n"), 0o600)
	complete := func(args ...string) []string {
		out, err := run(t, append([]string{"__complete", "--config", p}, args...)...)
		if err != nil {
			t.Fatalf("__complete %v: %v", args, err)
		}
		var names []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, ":") {
				break // the directive ends the list
			}
			names = append(names, l)
		}
		return names
	}
	for args, want := range map[string]string{
		"vm status ":       "web1 web2",
		"vm onboard web1 ": "web2",
		"vm logs ":         "web1 web2",
		"vm logs web1 ":    "",
		"vm status -o ":    "table json yaml",
		"config show -o ":  "yaml json",
		"up --provider ":   "lab multipass ssh kubeconfig",
	} {
		a := strings.Split(args, " ") // the trailing "" is the word being completed
		if got := strings.Join(complete(a...), " "); got != want {
			t.Errorf("complete %q: got %q, want %q", args, got, want)
		}
	}
}

// Every report prints as YAML too, the same fields as JSON.
func TestDoctorYAML(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meshvm.yaml")
	os.WriteFile(p, []byte("version: 1\ncluster:\n  provider: kubeconfig\n  kubeconfig: /nonexistent\nmachines: ssh\nvms:\n- {name: vm1, address: 127.0.0.1, user: nobody}\n"), 0o600)
	out, err := run(t, "--config", p, "doctor", "-o", "yaml", "--timeout", "10s")
	if ExitCode(err) != ExitFailed {
		t.Errorf("doctor with no cluster: %v, want exit 1", err)
	}
	var got []fleet.Finding
	if yerr := yaml.Unmarshal([]byte(out[:strings.LastIndex(out, "\n")+1]), &got); yerr != nil || len(got) == 0 {
		t.Fatalf("not a YAML list of findings (%v):\n%s", yerr, out)
	}
	if f := got[0]; f.Scope != "cluster" || f.Check != "API server" || f.Result != "fail" || f.Fix != "run hostctl up" {
		t.Errorf("first finding %+v, want the API server failing with its fix", f)
	}
}
