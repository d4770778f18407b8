package capture

// The real `pilot-agent istio-iptables` in throwaway namespaces: the
// rules it installs with meshvm's settings, its validator, and its cleanup.
// pilot-agent comes from MESHVM_PILOT_AGENT or the lab's build cache
// ($MESHVM_CACHE or ~/.cache/meshvm, filled by the lab tests).

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

var realEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ISTIO_INBOUND_PORTS=8000",
	"ISTIO_LOCAL_EXCLUDE_PORTS=22,15090,15021,15020", "ISTIO_SERVICE_CIDR=*", "ISTIO_META_DNS_CAPTURE=true",
	"PROXY_UID=1337", "PROXY_GID=1337"}

func ipt(t *testing.T, ns string, extraEnv []string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, pilotAgentBin(t), "istio-iptables"}, args...)...)
	cmd.Env = append(append([]string{}, realEnv...), extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("istio-iptables %v: %v\n%s", args, err, out)
	}
}

func inNS(t *testing.T, ns string, fn func()) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if err := netns.Set(h); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

func realExpect(t *testing.T) Expect {
	root, _ := fsroot.New("/")
	e := expect(true, meshvmEnv())
	e.Nameservers = (&Checker{Root: root}).nameservers()
	return e
}

// pilotAgentBin finds a real pilot-agent, or skips.
func pilotAgentBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MESHVM_PILOT_AGENT"); p != "" {
		return p
	}
	cache := os.Getenv("MESHVM_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "meshvm")
	}
	found, _ := filepath.Glob(filepath.Join(cache, "bin-*", "pilot-agent"))
	if len(found) == 0 {
		t.Skip("no pilot-agent: set MESHVM_PILOT_AGENT, or run the lab tests first (they build it into " + cache + ")")
	}
	return found[0]
}

// executable copies bin where uid 1337 may run it (the cache sits in
// root's home, closed to others).
func executable(t *testing.T, bin string) string {
	t.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "capture-real-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	p := filepath.Join(dir, "pilot-agent")
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRealIstioIptables(t *testing.T) {
	pa := executable(t, pilotAgentBin(t))
	ns := newNetNS(t)
	for _, a := range [][]string{{"link", "set", "lo", "up"}, {"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"addr", "add", "10.251.0.2/30", "dev", "veth0"}, {"link", "set", "veth0", "up"}, {"link", "set", "veth1", "up"}} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, a...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v %v %s", a, err, out)
		}
	}
	// Negative control first: no rules, the validator fails.
	var v Validation
	inNS(t, ns, func() { v = Validate(context.Background(), pa, 1337, 1337, nil) })
	t.Logf("validation without rules: passed=%v\n%s", v.Passed, v.Output)
	if v.Passed || !strings.Contains(v.Output, "iptables validation failed") {
		t.Error("without rules: want Istio's validation to run and fail (the negative control)")
	}
	ipt(t, ns, nil, "--cleanup-only")
	ipt(t, ns, nil)
	exec.Command("ip", "netns", "exec", ns, "iptables-legacy", "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "--sport", "7443", "-j", "RETURN").Run()
	saves := readIn(t, ns)
	verdict := Judge(saves, realExpect(t))
	if verdict.State != OK || len(verdict.Checks) != 12 {
		t.Errorf("real rules: got %s, want ok with 12 checks: %+v", verdict.State, verdict.Checks)
	}
	inNS(t, ns, func() { v = Validate(context.Background(), pa, 1337, 1337, nil) })
	t.Logf("validation with rules, as 1337: passed=%v\n%s", v.Passed, v.Output)
	if !v.Passed {
		t.Error("validation failed with rules")
	}
	inNS(t, ns, func() { v = Validate(context.Background(), pa, 0, 0, nil) })
	t.Logf("validation with rules, as root: passed=%v", v.Passed)
	if v.Passed || !strings.Contains(v.Output, "iptables validation failed") {
		t.Error("as root: want Istio's validation to run and fail (root's loopback traffic is exempt)")
	}
	// Both backends.
	first := verdict.Backends[0]
	other := map[string]string{"iptables-legacy": "iptables-nft", "iptables-nft": "iptables-legacy"}[first]
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", first+"-save -t nat | "+other+"-restore --noflush").CombinedOutput()
	if err != nil {
		t.Fatalf("%v %s", err, out)
	}
	verdict = Judge(readIn(t, ns), realExpect(t))
	c, _ := verdict.Problem()
	t.Logf("both: %s %v: %s", verdict.State, verdict.Backends, c.Detail)
	if verdict.State != Fail || len(verdict.Backends) != 2 || !strings.Contains(c.Detail, "both iptables-legacy") {
		t.Errorf("rules in both backends: got %s in %v (%s), want a failure naming both", verdict.State, verdict.Backends, c.Detail)
	}
	// What prepare's cleanup does: Istio's own, then forced per backend still holding chains.
	ipt(t, ns, nil, "--cleanup-only")
	held := Held(readIn(t, ns))
	t.Logf("after Istio's own cleanup still held: %v", held)
	for _, b := range held {
		ipt(t, ns, []string{"FORCE_IPTABLES_BINARY=" + strings.TrimPrefix(b, "iptables-")}, "--cleanup-only")
	}
	if h := Held(readIn(t, ns)); len(h) != 0 {
		t.Errorf("after forced cleanups still held: %v", h)
	}
	ipt(t, ns, nil)
	verdict = Judge(readIn(t, ns), realExpect(t))
	if verdict.State != OK || len(verdict.Backends) != 1 {
		t.Errorf("reinstalled after both cleanups: got %s in %v, want ok in one backend", verdict.State, verdict.Backends)
	}
}
