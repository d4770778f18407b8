//go:build linux

package multipass

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// multipass runs one command against the daemon in dir.
func multipass(t *testing.T, dir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	t.Setenv(DirEnv, dir)
	var out, errOut bytes.Buffer
	code = Main(args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

// plant writes an instance record as an earlier command left it.
func plant(t *testing.T, dir string, in instance) {
	t.Helper()
	d := &daemon{dir: dir}
	in.LabName = labName(in.Name)
	if err := d.save(&in); err != nil {
		t.Fatal(err)
	}
}

// The errors and exit codes of the real client, for what needs no VM.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	plant(t, dir, instance{Name: "gone", State: "Stopped", Deleted: true, ImageRelease: "22.04 LTS"})
	plant(t, dir, instance{Name: "half", State: "Starting", ImageRelease: "22.04 LTS"})
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"info", "nope", "--format", "json"}, 2, "info failed: instance \"nope\" does not exist\n"},
		{[]string{"launch", "22.04", "--name", "bad_name"}, 2, "launch failed: Invalid arguments supplied\nInvalid instance name supplied: bad_name\n"},
		{[]string{"launch", "--name", "vm1", "--memory", "64M"}, 2, "launch failed: Invalid arguments supplied\nInvalid memory size value supplied: 64M.\n"},
		{[]string{"launch", "--name", "vm1", "--memory", "lots"}, 1, "error: lots is not a valid memory size"},
		{[]string{"launch", "--name", "vm1", "--cpus", "0"}, 1, "Error: invalid CPU count '0', need a positive integer value.\n"},
		{[]string{"launch", "--name", "gone"}, 2, "launch failed: instance \"gone\" already exists\n"},
		{[]string{"launch", "plucky", "--name", "vm1"}, 2, "launch failed: Unable to find an image matching \"plucky\" in remote \"\".\n"},
		{[]string{"start", "gone"}, 2, "start failed: instance(s) missing\nInstance 'gone' is deleted. Use 'recover' to recover it or 'purge' to permanently delete it.\n\n"},
		{[]string{"start", "nope"}, 2, "start failed: instance(s) missing\nInstance 'nope' does not exist.\n\n"},
		{[]string{"stop", "gone"}, 2, "stop failed: instance \"gone\" is deleted\n"},
		{[]string{"stop", "half"}, 2, "stop failed: Cannot shut down instance half while starting.\nUse --force to power it off.\n"},
		{[]string{"exec", "gone", "-n", "--", "true"}, 2, "exec failed: instance \"gone\" is deleted\n"},
		// Without -n the client asks info first and prints its failure too.
		{[]string{"exec", "nope", "--", "true"}, 2, strings.Repeat("exec failed: instance \"nope\" does not exist\n", 2)},
		{[]string{"exec", "nope", "--no-map-working-directory", "--", "true"}, 2, "exec failed: instance \"nope\" does not exist\n"},
		{[]string{"exec", "half", "-n", "-d", "/tmp", "--", "true"}, 1, "Options --working-directory and --no-map-working-directory clash\n"},
		{[]string{"transfer", "-", "gone:/tmp/x"}, 2, "transfer failed: instance \"gone\" is deleted\n"},
		{[]string{"transfer", "-", "half:/tmp/x"}, 2, "transfer failed: instance \"half\" is not running\n"},
		{[]string{"delete", "nope"}, 2, "delete failed: instance \"nope\" does not exist\n"},
		{[]string{"recover", "nope"}, 2, "recover failed: instance \"nope\" does not exist\n"},
		{[]string{"info", "half", "--format", "table"}, 1, "--format json only"},
		{[]string{"frobnicate"}, 1, "Unknown command 'frobnicate'"},
	} {
		_, stderr, code := multipass(t, dir, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("multipass %v: got exit %d, stderr %q; want exit %d, stderr with %q", tc.args, code, stderr, tc.code, tc.stderr)
		}
	}
}

func TestDaemonDown(t *testing.T) {
	_, stderr, code := multipass(t, filepath.Join(t.TempDir(), "absent"), "list", "--format", "json")
	if code != 2 || !strings.HasPrefix(stderr, "list failed: cannot connect to the multipass socket\nPlease ensure multipassd is running") {
		t.Errorf("got exit %d, %q; want 2 and the socket named", code, stderr)
	}
}

// Deleted instances are reported until purged; recover brings one back
// Stopped; purge removes only deleted ones.
func TestDeletedRecoverPurge(t *testing.T) {
	dir := t.TempDir()
	plant(t, dir, instance{Name: "a", State: "Stopped", Deleted: true, ImageRelease: "22.04 LTS"})
	plant(t, dir, instance{Name: "b", State: "Stopped", Deleted: true, ImageRelease: "22.04 LTS"})
	plant(t, dir, instance{Name: "c", State: "Stopped", ImageRelease: "22.04 LTS"})
	states := func() map[string]string {
		out, stderr, code := multipass(t, dir, "list", "--format", "json")
		var l struct {
			List []struct{ Name, State string }
		}
		if err := json.Unmarshal([]byte(out), &l); err != nil || code != 0 {
			t.Fatalf("list: %v %d %s\n%s", err, code, stderr, out)
		}
		m := map[string]string{}
		for _, i := range l.List {
			m[i.Name] = i.State
		}
		return m
	}
	if got := states(); got["a"] != "Deleted" || got["b"] != "Deleted" || got["c"] != "Stopped" {
		t.Errorf("list: got %v", got)
	}
	out, _, code := multipass(t, dir, "info", "a", "--format", "json")
	if code != 0 || !strings.Contains(out, `"state": "Deleted"`) {
		t.Errorf("info of a deleted instance: exit %d\n%s", code, out)
	}
	if _, stderr, code := multipass(t, dir, "recover", "a", "c"); code != 0 {
		t.Errorf("recover: exit %d %s", code, stderr)
	}
	if _, stderr, code := multipass(t, dir, "purge"); code != 0 {
		t.Errorf("purge: exit %d %s", code, stderr)
	}
	if got := states(); len(got) != 2 || got["a"] != "Stopped" || got["c"] != "Stopped" {
		t.Errorf("after recover a and purge: got %v, want a and c Stopped, b gone", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "instances", "b.json")); err == nil {
		t.Error("b's record is left after purge")
	}
}

func TestLabName(t *testing.T) {
	if labName("vm1") != "vm1" || labName("k3s-agent-1") == "k3s-agent-1" || labName("VM1") == "VM1" || labName("VM1") == labName("vm1") {
		t.Errorf("labName: vm1=%s k3s-agent-1=%s VM1=%s", labName("vm1"), labName("k3s-agent-1"), labName("VM1"))
	}
	if n := labName("k3s-agent-1"); len(n) > 10 {
		t.Errorf("labName(k3s-agent-1) = %s, longer than a lab VM name may be", n)
	}
}
