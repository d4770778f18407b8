package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/pkg/host/fleet"
)

// ctEvent is one conntrack NEW event: the original tuple's source and
// destination port, and the reply tuple's source port, which is where the
// kernel's NAT sent the connection (15006 or 15001 when redirected).
type ctEvent struct {
	src            string
	dport, replyTo string
	line           string
}

var ctLine = regexp.MustCompile(`\[NEW\] tcp .*? src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)`)

// watchConntrack runs `conntrack -E` in ns (bounded by ctx) and collects
// the NEW tcp events.
func watchConntrack(t *testing.T, ctx context.Context, ns string) (events func() []ctEvent, stop func()) {
	t.Helper()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Fatalf("conntrack is not installed: apt-get install conntrack (.ci/run installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "conntrack", "-E", "-e", "NEW", "-p", "tcp")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("conntrack -E in %s: %v", ns, err)
	}
	var mu sync.Mutex
	var got []ctEvent
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := ctLine.FindStringSubmatch(sc.Text()); m != nil {
				mu.Lock()
				got = append(got, ctEvent{src: m[1], dport: m[4], replyTo: m[7], line: sc.Text()})
				mu.Unlock()
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // conntrack subscribes before the first attempt
	return func() []ctEvent {
			mu.Lock()
			defer mu.Unlock()
			return append([]ctEvent(nil), got...)
		}, func() {
			cancel()
			cmd.Wait()
			<-done
		}
}

// waitEvent waits until an event with the original destination port dport
// from src shows up, and returns it.
func waitEvent(t *testing.T, events func() []ctEvent, src, dport string) (ctEvent, bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range events() {
			if e.dport == dport && (src == "" || e.src == src) {
				return e, true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return ctEvent{}, false
}

// captureStatus returns vm status's verdict on the VM's capture rules.
func captureStatus(t *testing.T, cfgPath, vm string) (*fleet.Capture, string, error) {
	t.Helper()
	out, err := run(t, "--config", cfgPath, "vm", "status", vm, "-o", "json")
	var s []fleet.VMStatus
	if jerr := json.NewDecoder(strings.NewReader(jsonPart(out))).Decode(&s); jerr != nil || len(s) != 1 {
		t.Fatalf("vm status %s -o json: %v %v\n%s", vm, err, jerr, out)
	}
	return s[0].Capture, out, err
}

// captureOnLab proves, on the onboarded lab VM, where the kernel sends the
// connections the capture rules are about, by watching conntrack in the
// VM's namespace (lab addresses only, each attempt bounded): from the host
// to the app's port 8000 DNAT'ed to 15006, to the agent's 7443 untouched,
// from the app user outward to 15001. The agent's verdict says ok with
// Istio's validation passed. Then the rules are installed a second time in
// the other iptables backend, as an earlier run can leave them: the verdict
// fails naming both backends, in status, doctor and verify; a sidecar
// restart (vm onboard --restart) leaves one backend again, and the verdict
// is ok.
func captureOnLab(t *testing.T, ctx context.Context, cfgPath string, lab *labmachine.Provider, vm string) {
	t.Helper()
	m, err := lab.Info(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	vmIP := m.Addresses[0]
	hostIP, err := lab.HostAddress(vm)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := lab.NetNS(vm)
	if err != nil {
		t.Fatal(err)
	}

	c, out, err := captureStatus(t, cfgPath, vm)
	if err != nil || c == nil || c.State != fleet.CaptureOK || len(c.Backends) != 1 || c.Validation == nil || !c.Validation.Passed {
		t.Fatalf("capture verdict on a fresh VM: got %+v (%v)\n%s\nwant ok, one backend, Istio's validation passed", c, err, out)
	}
	t.Logf("capture verdict: %s; validation: %s", c.Detail, c.Validation.Output)
	first := c.Backends[0]

	events, stop := watchConntrack(t, ctx, ns)
	dial := func(port string) {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(vmIP, port), 3*time.Second)
		if err == nil {
			conn.Close()
		}
	}
	dial("8000")
	dial("7443")
	// The app's user (nobody) connects out to the host; no listener needed.
	appOut := fmt.Sprintf("timeout 3 bash -c 'echo > /dev/tcp/%s/5999' || true", hostIP)
	if out, err := lab.Exec(ctx, vm, nil, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", appOut); err != nil {
		t.Errorf("connect out as nobody: %v\n%s", err, out)
	}
	for _, want := range []struct{ name, src, dport, replyTo string }{
		{"host -> VM:8000 (captured)", hostIP, "8000", "15006"},
		{"host -> VM:7443 (the agent, exempt)", hostIP, "7443", "7443"},
		{"app user -> host:5999 (captured)", vmIP, "5999", "15001"},
	} {
		e, ok := waitEvent(t, events, want.src, want.dport)
		switch {
		case !ok:
			t.Errorf("%s: no conntrack event in %s; saw %+v", want.name, ns, events())
		case e.replyTo != want.replyTo:
			t.Errorf("%s: the kernel sent it to port %s, want %s: %s", want.name, e.replyTo, want.replyTo, e.line)
		default:
			t.Logf("%s: %s", want.name, e.line)
		}
	}
	stop()

	// The rules a second time, in the other backend.
	other := map[string]string{"iptables-legacy": "iptables-nft", "iptables-nft": "iptables-legacy"}[first]
	if other == "" {
		t.Fatalf("unknown backend %q", first)
	}
	copyRules := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "sh", "-c",
		first+"-save -t nat | "+other+"-restore --noflush")
	if out, err := copyRules.CombinedOutput(); err != nil {
		t.Fatalf("copy the rules into %s: %v\n%s", other, err, out)
	}
	repaired := false
	t.Cleanup(func() {
		if !repaired { // leave the shared lab clean whatever happened
			exec.Command("ip", "netns", "exec", ns, other, "-t", "nat", "-F").Run()
			exec.Command("ip", "netns", "exec", ns, other, "-t", "nat", "-X").Run()
		}
	})
	c, out, err = captureStatus(t, cfgPath, vm)
	if err == nil || c == nil || c.State != fleet.CaptureFail || len(c.Backends) != 2 ||
		!strings.Contains(c.Detail, "both iptables-legacy") || !strings.Contains(c.Detail, "iptables-nft") ||
		!strings.Contains(err.Error(), "hostctl vm onboard "+vm+" --restart") {
		t.Errorf("capture verdict with rules in both backends: got %+v (%v)\n%s\nwant a failure naming both and the restart", c, err, out)
	}
	out, err = run(t, "--config", cfgPath, "doctor", "-o", "json")
	var findings []fleet.Finding
	json.Unmarshal([]byte(jsonPart(out)), &findings)
	found := false
	for _, f := range findings {
		if f.Scope == vm && f.Check == "capture rules" {
			found = f.Result == "fail" && strings.Contains(f.Detail, "both") && strings.Contains(f.Fix, "--restart")
		}
	}
	if err == nil || !found {
		t.Errorf("doctor with rules in both backends: %v\n%s\nwant a failed capture row with the fix", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "verify"); err == nil || !regexp.MustCompile(`capture rules\s+FAIL\s`).MatchString(out) {
		t.Errorf("verify with rules in both backends: %v\n%s\nwant the capture check failed", err, out)
	}

	// The fix the verdict names: a restart cleans both backends.
	if out, err := run(t, "--config", cfgPath, "vm", "onboard", vm, "--restart"); err != nil {
		t.Fatalf("vm onboard --restart: %v\n%s", err, out)
	}
	c, out, err = captureStatus(t, cfgPath, vm)
	if err != nil || c == nil || c.State != fleet.CaptureOK || len(c.Backends) != 1 || c.Validation == nil || !c.Validation.Passed {
		t.Errorf("capture verdict after the restart: got %+v (%v)\n%s\nwant ok in one backend again", c, err, out)
	} else {
		repaired = true
	}
}
