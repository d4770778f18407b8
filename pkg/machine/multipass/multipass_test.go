package multipass

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshvm/meshvm/pkg/machine"
)

// fake returns a provider driving the fake multipass (fake_test.go) and
// the fake's state directory.
func fake(t *testing.T) (*Provider, fakeState) {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_MULTIPASS_STATE", dir)
	return &Provider{Binary: self, WaitTimeout: 10 * time.Second, poll: 10 * time.Millisecond}, fakeState{dir}
}

func calls(f fakeState) []string {
	return strings.Split(f.read("calls.log"), "\n")
}

func count(f fakeState, prefix string) int {
	n := 0
	for _, c := range calls(f) {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestLaunchReusesAndReadsJSON(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	spec := machine.Spec{Name: "vm1", Image: "22.04", CPUs: 2, Memory: "1G", Disk: "4G"}
	m, err := p.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Running() || m.Address() != "192.168.64.7" || m.Arch != "arm64" {
		t.Errorf("got %+v, want Running at 192.168.64.7 on arm64", m)
	}
	if got := calls(f)[1]; got != "launch 22.04 --name vm1 --cpus 2 --memory 1G --disk 4G" {
		t.Errorf("launch invocation: got %q", got)
	}
	// Relaunching an existing instance never recreates it.
	if _, err := p.Launch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if n := count(f, "launch"); n != 1 {
		t.Errorf("got %d launches, want 1: %q", n, calls(f))
	}
	// A stopped instance has no address, and is started, not relaunched.
	f.write("vm1.state", "Stopped")
	if m, err := p.Info(ctx, "vm1"); err != nil || m.State != "Stopped" || m.Address() != "" {
		t.Errorf("stopped: got %+v, %v, want Stopped with no address", m, err)
	}
	if _, err := p.Launch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if count(f, "start vm1") != 1 || count(f, "launch") != 1 {
		t.Errorf("stopped instance not started once: %q", calls(f))
	}
}

// TestLaunchConvergesEveryState brings up an instance left in each state
// Multipass reports (format_utils.cpp), as `multipass start` resolves them
// (daemon.cpp start).
func TestLaunchConvergesEveryState(t *testing.T) {
	for _, tc := range []struct {
		name, state, then string
		wantStart         bool
		wantErr           []string // an error naming all of these, and neither launch nor start run
	}{
		{name: "stopped", state: "Stopped", wantStart: true},
		{name: "suspended", state: "Suspended", wantStart: true},
		{name: "starting is waited for by start", state: "Starting", wantStart: true},
		{name: "restarting is waited for by start", state: "Restarting", wantStart: true},
		{name: "delayed shutdown is cancelled by start", state: "Delayed Shutdown", wantStart: true},
		{name: "suspending is waited for, then started", state: "Suspending", then: "3 Suspended", wantStart: true},
		{name: "running", state: "Running"},
		{name: "deleted", state: "Deleted", wantErr: []string{"multipass recover vm1", "multipass purge"}},
		{name: "unknown", state: "Unknown", wantErr: []string{"unknown state", "multipass stop --force vm1"}},
		{name: "a state hostctl does not know", state: "Frozen", wantErr: []string{`"Frozen"`, "multipass info vm1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, f := fake(t)
			var mu sync.Mutex
			var progress []string
			p.Progress = func(format string, a ...any) {
				mu.Lock()
				progress = append(progress, fmt.Sprintf(format, a...))
				mu.Unlock()
			}
			f.write("vm1.state", tc.state)
			f.write("vm1.then", tc.then)
			m, err := p.Launch(context.Background(), machine.Spec{Name: "vm1"})
			if tc.wantErr != nil {
				for _, want := range tc.wantErr {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("got %v, want an error naming %q", err, want)
					}
				}
				if count(f, "start") != 0 || count(f, "launch") != 0 {
					t.Errorf("acted on a %s instance: %q", tc.state, calls(f))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !m.Running() || m.Address() == "" || m.Arch != "arm64" {
				t.Errorf("got %+v, want it running with an address", m)
			}
			if got := count(f, "start vm1"); got != map[bool]int{true: 1}[tc.wantStart] || count(f, "launch") != 0 {
				t.Errorf("got %d starts (want start %v) and no launch: %q", got, tc.wantStart, calls(f))
			}
			if tc.then != "" && !strings.Contains(strings.Join(progress, "\n"), "waiting for vm1 to run with an IPv4 address (it is Suspending)") {
				t.Errorf("progress does not say what it waits for: %q", progress)
			}
		})
	}
}

func TestLaunchGivesUpNamingWhatItWaitedFor(t *testing.T) {
	p, f := fake(t)
	p.WaitTimeout = 200 * time.Millisecond
	f.write("vm1.state", "Suspending")
	_, err := p.Launch(context.Background(), machine.Spec{Name: "vm1"})
	if err == nil || !strings.Contains(err.Error(), "gave up after 200ms waiting for vm1 to run with an IPv4 address (it is Suspending)") {
		t.Errorf("got %v, want the wait named", err)
	}
}

// A running instance without an address yet reports "N/A"
// (runtime_instance_info_helper.cpp): it is no address, and Launch waits for one.
func TestNotAnAddressIsNeverUsed(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	f.write("vm1.state", "Running")
	f.write("vm1.ipv4", `"N/A"`)
	if m, err := p.Info(ctx, "vm1"); err != nil || len(m.Addresses) != 0 {
		t.Errorf("info: got %+v, %v, want no addresses", m, err)
	}
	if ms, err := p.List(ctx); err != nil || len(ms) != 1 || len(ms[0].Addresses) != 0 || ms[0].State != "Running" {
		t.Errorf("list: got %+v, %v, want vm1 Running with no addresses", ms, err)
	}
	f.write("vm1.then", "3 Running")
	m, err := p.Launch(ctx, machine.Spec{Name: "vm1"})
	if err != nil || m.Address() != "192.168.64.7" {
		t.Errorf("launch: got %+v, %v, want it waited for 192.168.64.7", m, err)
	}
}

// A first up killed midway leaves the instance Starting, cloud-init not
// finished; the next up carries on with it.
func TestInterruptedLaunchIsRecovered(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	f.write("launch-mode", "killed")
	if _, err := p.Launch(ctx, machine.Spec{Name: "vm1"}); err == nil {
		t.Fatal("a killed launch reported success")
	}
	if f.read("vm1.state") != "Starting" {
		t.Fatalf("fake: state %q after a killed launch, want Starting", f.read("vm1.state"))
	}
	m, err := p.Launch(ctx, machine.Spec{Name: "vm1"})
	if err != nil || !m.Running() || m.Arch != "arm64" {
		t.Fatalf("second up: got %+v, %v, want it running", m, err)
	}
	if count(f, "launch") != 1 || count(f, "start vm1") != 1 || f.read("vm1.booting") != "0" {
		t.Errorf("want one launch, one start and cloud-init waited for: %q", calls(f))
	}
}

func TestLaunchWaitsForCloudInit(t *testing.T) {
	p, f := fake(t)
	f.write("vm1.state", "Running")
	f.write("vm1.booting", "3")
	m, err := p.Launch(context.Background(), machine.Spec{Name: "vm1"})
	if err != nil || m.Arch != "arm64" || f.read("vm1.booting") != "0" {
		t.Errorf("got %+v, %v (booting %s), want cloud-init waited for", m, err, f.read("vm1.booting"))
	}
}

// Another launch of the same name still preparing (daemon.cpp create_vm)
// is waited for, then launched.
func TestLaunchWhileAnotherPrepares(t *testing.T) {
	p, f := fake(t)
	f.write("launch-mode", "preparing")
	if _, err := p.Launch(context.Background(), machine.Spec{Name: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if count(f, "launch") != 2 {
		t.Errorf("want the launch retried once: %q", calls(f))
	}
}

func TestLaunchTimeoutNamesTheNetwork(t *testing.T) {
	p, f := fake(t)
	f.write("launch-mode", "timeout")
	_, err := p.Launch(context.Background(), machine.Spec{Name: "vm1"})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	for _, want := range []string{"VPN", "firewall", "bootpd", "timed out waiting for response"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to name %s", err, want)
		}
	}
}

func TestInvalidNameLaunchesNothing(t *testing.T) {
	p, f := fake(t)
	_, err := p.Launch(context.Background(), machine.Spec{Name: "vm_1"})
	if err == nil || !strings.Contains(err.Error(), "letters, digits and hyphens") {
		t.Errorf("got %v, want Multipass's naming rule", err)
	}
	if f.read("calls.log") != "" {
		t.Errorf("multipass was run: %q", calls(f))
	}
	for name, valid := range map[string]bool{"a": true, "vm-1": true, "K3s-agent-2": true, "": false, "1vm": false, "vm-": false, "-vm": false, "vm.1": false, "vm_1": false, "vm 1": false} {
		if got := ValidName(name) == nil; got != valid {
			t.Errorf("ValidName(%q): got valid %v, want %v", name, got, valid)
		}
	}
}

func TestErrors(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	if _, err := p.Info(ctx, "ghost"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("info of a missing instance: got %v, want ErrNotFound", err)
	}
	if _, err := p.cli(ctx, "ghost", "start", "ghost"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("start of a missing instance (start.cpp's own wording): got %v, want ErrNotFound", err)
	}
	if err := p.Stop(ctx, "ghost"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("stop of a missing instance: got %v, want ErrNotFound", err)
	}
	if err := p.Delete(ctx, "ghost"); err != nil {
		t.Errorf("delete of a missing instance: got %v, want nil", err)
	}
	none := &Provider{Binary: "multipass-not-installed"}
	if _, err := none.Info(ctx, "vm1"); err == nil || !strings.Contains(err.Error(), "install it") {
		t.Errorf("no multipass: got %v", err)
	}

	// A remote command's own words are not Multipass's.
	f.write("vm1.state", "Running")
	out, err := p.Exec(ctx, "vm1", nil, "sh", "-c", `echo partial; echo 'Unit ghost.service does not exist' >&2; echo 'instance "vm1" does not exist' >&2; exit 2`)
	if err == nil || errors.Is(err, machine.ErrNotFound) || errors.Is(err, ErrDaemonDown) {
		t.Errorf("exec whose command failed: got %v, want a plain error", err)
	}
	if !strings.Contains(string(out), "partial") || !strings.Contains(string(out), "Unit ghost.service does not exist") {
		t.Errorf("exec output on failure: got %q, want stdout then stderr", out)
	}

	f.write("daemon-down", "yes")
	_, err = p.Info(ctx, "vm1")
	if !errors.Is(err, ErrDaemonDown) {
		t.Fatalf("daemon down: got %v, want ErrDaemonDown", err)
	}
	for _, want := range []string{"sudo launchctl kickstart -k system/com.canonical.multipassd", "sudo snap start multipass"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("daemon down: got %v, want it to name %q", err, want)
		}
	}
	if _, err := p.Exec(ctx, "vm1", nil, "true"); !errors.Is(err, ErrDaemonDown) {
		t.Errorf("exec with the daemon down: got %v, want ErrDaemonDown", err)
	}
}

// With the host's working directory under one of the instance's mounts,
// Multipass rewrites a sudo command with its arguments joined unquoted
// (exec.cpp), unless told not to map it.
func TestExecIsNotMappedIntoMounts(t *testing.T) {
	p, f := fake(t)
	mount := t.TempDir()
	f.write("vm1.state", "Running")
	f.write("vm1.mount", mount)
	t.Chdir(mount)
	out, err := p.Exec(context.Background(), "vm1", nil, "sh", "-c", `printf '%s|' a 'b c'`)
	if err != nil || string(out) != "a|b c|" {
		t.Errorf("got %q, %v, want the script run as quoted", out, err)
	}
}

func TestTransferStreamsThenInstallsAsRoot(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	if _, err := p.Launch(ctx, machine.Spec{Name: "vm1"}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "etc/meshvm/agent/server-key.pem")
	if err := p.Transfer(ctx, "vm1", dst, strings.NewReader("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != "key" {
		t.Errorf("got %q, %v, want the data at %s", got, err, dst)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: got %v, %v, want 0600", fi.Mode(), err)
	}
	var staged string
	for _, c := range calls(f) {
		if strings.HasPrefix(c, "transfer ") {
			staged = c
		}
	}
	dir := filepath.Dir(strings.TrimPrefix(staged, "transfer - vm1:"))
	if !strings.HasPrefix(staged, "transfer - vm1:/tmp/hostctl-transfer.") {
		t.Errorf("want the data streamed from stdin into a staging directory: %q", calls(f))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("staging directory %s left behind (%v)", dir, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// A second transfer replaces the file.
	if err := p.Transfer(ctx, "vm1", dst, strings.NewReader("new key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "new key" {
		t.Errorf("second transfer: got %q", got)
	}

	var in info
	tmpl, _ := os.ReadFile("testdata/info.json")
	if err := json.Unmarshal(tmpl, &in); err != nil {
		t.Errorf("testdata/info.json is not valid JSON: %v", err)
	}
}

// The staging directory is the default user's alone, and what root
// installs from it must be a regular file: a link planted there is refused.
func TestTransferRefusesAPlantedLink(t *testing.T) {
	p, f := fake(t)
	ctx := context.Background()
	f.write("vm1.state", "Running")
	out, err := p.Exec(ctx, "vm1", nil, "sh", "-c", stageScript)
	if err != nil {
		t.Fatal(err)
	}
	dir := strings.TrimSpace(string(out))
	defer os.RemoveAll(dir)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("staging directory: got %v, %v, want mode 0700", fi, err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("not yours"), 0o600)
	os.Symlink(secret, dir+"/data")
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := p.Exec(ctx, "vm1", nil, "sh", "-c", installScript(dir, dst, 0o644)); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("got %v, want the link refused", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("%s was written through the link (%v)", dst, err)
	}
}
