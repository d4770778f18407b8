package multipass

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshvm/meshvm/pkg/machine"
)

// The test binary doubles as a fake `multipass` (a boundary that cannot run
// here): with FAKE_MULTIPASS_STATE set it answers like the CLI, keeping
// instances as files and logging every invocation.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FAKE_MULTIPASS_STATE"); dir != "" {
		os.Exit(fakeMultipass(dir, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeMultipass(dir string, args []string) int {
	f, _ := os.OpenFile(filepath.Join(dir, "calls.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	fmt.Fprintln(f, strings.Join(args, " "))
	f.Close()
	state := func(name string) string { b, _ := os.ReadFile(filepath.Join(dir, name+".state")); return string(b) }
	missing := func(cmd, name string) int {
		fmt.Fprintf(os.Stderr, "%s failed: The following errors occurred:\ninstance \"%s\" does not exist\n", cmd, name)
		return 2
	}
	switch args[0] {
	case "info":
		name := args[1]
		if state(name) == "" {
			return missing("info", name)
		}
		tmpl, _ := os.ReadFile("testdata/info.json")
		ip := []string{`"IP"`, `"192.168.64.7"`}
		if state(name) != "Running" {
			ip = []string{"\n                \"IP\"", ""} // only a running instance has an address
		}
		out := strings.NewReplacer(append(ip, `"NAME"`, `"`+name+`"`, `"STATE"`, `"`+state(name)+`"`)...).Replace(string(tmpl))
		fmt.Print(out)
	case "list":
		fmt.Print(`{"list": []}`)
	case "launch":
		os.WriteFile(filepath.Join(dir, args[3]+".state"), []byte("Running"), 0o600)
	case "start":
		os.WriteFile(filepath.Join(dir, args[1]+".state"), []byte("Running"), 0o600)
	case "exec":
		if state(args[1]) == "" {
			return missing("exec", args[1])
		}
		if strings.Join(args[2:], " ") == "-- sudo -- uname -m" {
			fmt.Println("aarch64")
		}
	case "transfer":
		data, _ := os.ReadFile(args[1])
		os.WriteFile(filepath.Join(dir, "transferred"), data, 0o600)
	case "delete":
		name := args[len(args)-1]
		if state(name) == "" {
			return missing("delete", name)
		}
		os.Remove(filepath.Join(dir, name+".state"))
	default:
		fmt.Fprintf(os.Stderr, "fake multipass: unexpected %q\n", args)
		return 1
	}
	return 0
}

func fake(t *testing.T) (*Provider, string) {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_MULTIPASS_STATE", dir)
	return &Provider{Binary: self}, dir
}

func calls(t *testing.T, dir string) []string {
	b, _ := os.ReadFile(filepath.Join(dir, "calls.log"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestLaunchReusesAndReadsJSON(t *testing.T) {
	p, dir := fake(t)
	ctx := context.Background()
	spec := machine.Spec{Name: "vm1", Image: "22.04", CPUs: 2, Memory: "1G", Disk: "4G"}
	m, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != "Running" || m.Addresses[0] != "192.168.64.7" || m.Arch != "arm64" {
		t.Errorf("got %+v, want Running at 192.168.64.7 on arm64", m)
	}
	if got := calls(t, dir)[1]; got != "launch 22.04 --name vm1 --cpus 2 --memory 1G --disk 4G" {
		t.Errorf("launch invocation: got %q", got)
	}
	// Relaunching an existing instance never recreates it.
	if _, err := p.Launch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range calls(t, dir) {
		if strings.HasPrefix(c, "launch") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("got %d launches, want 1: %q", n, calls(t, dir))
	}
	// A stopped instance has no address, and is started, not relaunched.
	os.WriteFile(filepath.Join(dir, "vm1.state"), []byte("Stopped"), 0o600)
	if m, err := p.Info(ctx, "vm1"); err != nil || m.State != "Stopped" || m.Address() != "" {
		t.Errorf("stopped: got %+v, %v, want Stopped with no address", m, err)
	}
	if _, err := p.Launch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(calls(t, dir), "\n"), "start vm1") {
		t.Errorf("stopped instance not started: %q", calls(t, dir))
	}
}

func TestErrors(t *testing.T) {
	p, _ := fake(t)
	ctx := context.Background()
	if _, err := p.Info(ctx, "ghost"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("info of a missing instance: got %v, want ErrNotFound", err)
	}
	if err := p.Delete(ctx, "ghost"); err != nil {
		t.Errorf("delete of a missing instance: got %v, want nil", err)
	}
	none := &Provider{Binary: "multipass-not-installed"}
	if _, err := none.Info(ctx, "vm1"); err == nil || !strings.Contains(err.Error(), "install it") {
		t.Errorf("no multipass: got %v", err)
	}
}

func TestTransferStagesThenInstallsAsRoot(t *testing.T) {
	p, dir := fake(t)
	ctx := context.Background()
	if _, err := p.Launch(ctx, machine.Spec{Name: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Transfer(ctx, "vm1", "/etc/meshvm/agent/server-key.pem", strings.NewReader("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "transferred"))
	if string(got) != "key" {
		t.Errorf("transferred %q, want the data", got)
	}
	all := strings.Join(calls(t, dir), "\n")
	if !strings.Contains(all, "vm1:/tmp/.server-key.pem.hostctl") || !strings.Contains(all, "install -m 600") || !strings.Contains(all, "mv -f '/etc/meshvm/agent/.server-key.pem.hostctl-tmp' '/etc/meshvm/agent/server-key.pem'") {
		t.Errorf("transfer calls: %s", all)
	}
	var in info
	tmpl, _ := os.ReadFile("testdata/info.json")
	if err := json.Unmarshal(tmpl, &in); err != nil {
		t.Errorf("testdata/info.json is not valid JSON: %v", err)
	}
}
