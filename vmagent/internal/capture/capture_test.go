package capture

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// These tests load rules with the real iptables-legacy-restore and
// iptables-nft-restore into throwaway network namespaces and read them back
// with Read, as the agent does on a VM.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (run the tests as root)")
	}
	for _, n := range []string{"ip", "iptables-legacy-restore", "iptables-nft-restore"} {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("needs %s: apt-get install iproute2 iptables (%v)", n, err)
		}
	}
}

func newNetNS(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "captest-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// load feeds rules to a restore tool inside ns.
func load(t *testing.T, ns, tool, rules string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, tool, "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", tool, err, out)
	}
}

// readIn runs Read inside ns on a thread that never leaves it.
func readIn(t *testing.T, ns string) Saves {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan Saves)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(h); err != nil {
			t.Error(err)
			done <- Saves{}
			return
		}
		done <- Read(context.Background(), nil)
	}()
	return <-done
}

func rules(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "meshvm.rules"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// meshvmEnv is the part of the sidecar environment meshvm's cluster.env gives.
func meshvmEnv() map[string]string {
	return map[string]string{
		"ISTIO_INBOUND_PORTS": "8000", "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
		"ISTIO_SERVICE_CIDR": "*", "ISTIO_META_DNS_CAPTURE": "true", "PROXY_UID": "1337", "PROXY_GID": "1337",
	}
}

func expect(active bool, env map[string]string) Expect {
	return Expect{Active: active, Env: env, AgentPort: 7443, Addr: netip.MustParseAddr("10.213.0.2"), Iface: "host0",
		Nameservers: []netip.Addr{netip.MustParseAddr("10.213.0.1")}}
}

func failed(v Verdict) []string {
	var out []string
	for _, c := range v.Checks {
		if c.State == Fail {
			out = append(out, c.Name+": "+c.Detail)
		}
	}
	return out
}

func TestVerdictOnRealRules(t *testing.T) {
	meshvm := rules(t)
	noExempt := strings.Replace(meshvm, "-A OUTPUT -p tcp --sport 7443 -j RETURN\n", "", 1)
	wildcard := strings.Replace(meshvm, "-A ISTIO_INBOUND -p tcp --dport 8000 -j ISTIO_IN_REDIRECT\n",
		"-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n"+
			"-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN\n"+
			"-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n", 1)
	wildEnv := meshvmEnv()
	wildEnv["ISTIO_INBOUND_PORTS"] = "*"
	wildExcl := meshvmEnv()
	wildExcl["ISTIO_INBOUND_PORTS"], wildExcl["ISTIO_LOCAL_EXCLUDE_PORTS"] = "*", "22,15090,15021,15020,7443"
	wildcardAgent := strings.Replace(wildcard, "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n",
		"-A ISTIO_INBOUND -p tcp --dport 7443 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n", 1)

	tests := []struct {
		name         string
		legacy, nft  string
		active       bool
		env          map[string]string
		wantState    State
		wantBackends string
		// wantFailed are substrings each failed check must hold, in order.
		wantFailed []string
	}{
		{name: "legacy only", legacy: meshvm, active: true, env: meshvmEnv(), wantState: OK, wantBackends: "iptables-legacy"},
		{name: "nft only", nft: meshvm, active: true, env: meshvmEnv(), wantState: OK, wantBackends: "iptables-nft"},
		{name: "both backends", legacy: meshvm, nft: meshvm, active: true, env: meshvmEnv(), wantState: Fail,
			wantBackends: "iptables-legacy,iptables-nft", wantFailed: []string{"both iptables-legacy (IPv4) and iptables-nft (IPv4)"}},
		{name: "no rules while running", active: true, env: meshvmEnv(), wantState: Fail,
			wantFailed: []string{"neither iptables-legacy nor iptables-nft holds"}},
		{name: "no rules, sidecar stopped", active: false, env: meshvmEnv(), wantState: Off},
		{name: "rules left, sidecar stopped", nft: meshvm, active: false, env: meshvmEnv(), wantState: Fail,
			wantBackends: "iptables-nft", wantFailed: []string{"not running, but iptables-nft (IPv4) still hold"}},
		{name: "agent replies captured", legacy: noExempt, active: true, env: meshvmEnv(), wantState: Fail,
			wantBackends: "iptables-legacy", wantFailed: []string{"agent :7443 replies exempt: redirected to 15001, want not redirected"}},
		{name: "wildcard inbound captures the agent port", legacy: wildcard, active: true, env: wildEnv, wantState: Fail,
			wantBackends: "iptables-legacy", wantFailed: []string{"agent :7443 exempt inbound: redirected to 15006, want not redirected"}},
		{name: "wildcard inbound with the agent port excluded", legacy: wildcardAgent, active: true, env: wildExcl, wantState: OK,
			wantBackends: "iptables-legacy"},
		{name: "inbound port not captured", legacy: meshvm, active: true,
			env:       func() map[string]string { e := meshvmEnv(); e["ISTIO_INBOUND_PORTS"] = "8000,9000"; return e }(),
			wantState: Fail, wantBackends: "iptables-legacy", wantFailed: []string{"inbound :9000 -> 15006: not redirected, want redirected to 15006"}},
		{name: "proxyless, no rules", active: true,
			env:       func() map[string]string { e := meshvmEnv(); e["DISABLE_ENVOY"] = "true"; return e }(),
			wantState: Off},
		{name: "proxyless with rules left", nft: meshvm, active: true,
			env:       func() map[string]string { e := meshvmEnv(); e["DISABLE_ENVOY"] = "true"; return e }(),
			wantState: Fail, wantBackends: "iptables-nft", wantFailed: []string{"without Envoy (DISABLE_ENVOY=true, proxyless), but iptables-nft (IPv4) hold"}},
		{name: "operator's rules", legacy: meshvm, active: true,
			env:       func() map[string]string { e := meshvmEnv(); e["ISTIO_CUSTOM_IP_TABLES"] = "true"; return e }(),
			wantState: Off, wantBackends: "iptables-legacy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetNS(t)
			if tc.legacy != "" {
				load(t, ns, "iptables-legacy-restore", tc.legacy)
			}
			if tc.nft != "" {
				load(t, ns, "iptables-nft-restore", tc.nft)
			}
			saves := readIn(t, ns)
			for k, err := range saves.Err {
				t.Fatalf("read %s: %v", k, err)
			}
			v := Judge(saves, expect(tc.active, tc.env))
			if v.State != tc.wantState {
				t.Errorf("got state %s, want %s; checks %+v", v.State, tc.wantState, v.Checks)
			}
			if got := strings.Join(v.Backends, ","); got != tc.wantBackends {
				t.Errorf("got backends %q, want %q", got, tc.wantBackends)
			}
			got := failed(v)
			if len(got) != len(tc.wantFailed) {
				t.Fatalf("got failed checks %q, want %d matching %q", got, len(tc.wantFailed), tc.wantFailed)
			}
			for i, w := range tc.wantFailed {
				if !strings.Contains(got[i], w) {
					t.Errorf("failed check %d: got %q, want it to contain %q", i, got[i], w)
				}
			}
			for _, c := range v.Checks {
				if c.State == Fail && c.Fix == "" {
					t.Errorf("failed check %q names no fix", c.Name)
				}
			}
		})
	}
}

// The checks of a good verdict name every path the issue lists.
func TestVerdictCoversEveryPath(t *testing.T) {
	ns := newNetNS(t)
	load(t, ns, "iptables-legacy-restore", rules(t))
	v := Judge(readIn(t, ns), expect(true, meshvmEnv()))
	var names []string
	for _, c := range v.Checks {
		names = append(names, c.Name+"="+string(c.State))
	}
	want := []string{"backend=ok", "inbound :8000 -> 15006=ok", "inbound :22 exempt=ok", "inbound :15090 exempt=ok",
		"inbound :15021 exempt=ok", "inbound :15020 exempt=ok", "agent :7443 exempt inbound=ok", "agent :7443 replies exempt=ok",
		"outbound app -> 15001=ok", "outbound uid 1337 exempt=ok", "dns udp 10.213.0.1:53 -> 15053=ok", "dns tcp 10.213.0.1:53 -> 15053=ok"}
	if strings.Join(names, "\n") != strings.Join(want, "\n") {
		t.Errorf("got checks\n%s\nwant\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
}

func TestParseSave(t *testing.T) {
	save := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:ISTIO_X - [0:0]
-A PREROUTING -p tcp -m tcp ! --dport 22 -m comment --comment "a b" -j ISTIO_X
-A ISTIO_X -p tcp -m conntrack --ctstate NEW -j REDIRECT --to-ports 15006
COMMIT
`
	rs, err := ParseSave([]byte(save))
	if err != nil {
		t.Fatal(err)
	}
	p := Packet{Proto: "tcp", Src: peer, Dst: peer, DPort: 80, UID: -1, GID: -1}
	o := rs["nat"].Eval("PREROUTING", p)
	// The conntrack match is not read: the rule is passed over and named.
	if o.RedirectPort != 0 || len(o.Unknown) != 1 || !strings.Contains(o.Unknown[0], "--ctstate") {
		t.Errorf("got %+v, want no redirect and the conntrack rule named as unknown", o)
	}
	p.DPort = 22
	if o := rs["nat"].Eval("PREROUTING", p); len(o.Unknown) != 0 || o.Target != "ACCEPT" {
		t.Errorf("port 22: got %+v, want ACCEPT without reaching ISTIO_X", o)
	}
	if _, err := ParseSave([]byte("-A X -j ACCEPT\n")); err == nil {
		t.Error("got no error for a rule outside a table")
	}
	if _, err := ParseSave([]byte("*nat\nhello\n")); err == nil {
		t.Error("got no error for a line that is not iptables-save output")
	}
}

// The Checker reads the expectations from the sidecar environment root
// wrote, judges the namespace's rules against them and adds the
// validator's record.
func TestCheckerUsesSidecarEnvAndValidation(t *testing.T) {
	ns := newNetNS(t)
	load(t, ns, "iptables-nft-restore", rules(t))
	saves := readIn(t, ns)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "run/meshvm"), 0o755)
	envText := "ISTIO_INBOUND_PORTS=8000,9000\nISTIO_SERVICE_CIDR=*\nPROXY_UID=1337\nINSTANCE_IP=10.213.0.2\n"
	os.WriteFile(filepath.Join(dir, "run/meshvm/sidecar.env"), []byte(envText), 0o600)
	root, err := fsroot.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := &Checker{Root: root, EnvPath: "/run/meshvm/sidecar.env", AgentPort: 7443, Read: func(context.Context) Saves { return saves }}

	v := c.Verdict(context.Background(), "active")
	if got := failed(v); v.State != Fail || len(got) != 1 || !strings.Contains(got[0], "inbound :9000") {
		t.Errorf("got %s with failures %q, want a failure for port 9000 alone (from sidecar.env)", v.State, got)
	}
	if last := v.Checks[len(v.Checks)-1]; last.Name != "istio validation" || last.State != Skipped {
		t.Errorf("got last check %+v, want the validation skipped for want of a record", last)
	}
	if err := Save(root, Validation{Passed: true, Output: "Validation passed, iptables rules established"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "run/meshvm/sidecar.env"), []byte(strings.Replace(envText, ",9000", "", 1)), 0o600)
	v = c.Verdict(context.Background(), "active")
	if v.State != OK || v.Checks[len(v.Checks)-1].State != OK || v.Validation == nil || !v.Validation.Passed {
		t.Errorf("got %s, checks %+v, validation %+v, want ok with the validation passed", v.State, v.Checks, v.Validation)
	}
	if v := c.Verdict(context.Background(), "activating"); v.State != Skipped {
		t.Errorf("activating: got %s, want skipped", v.State)
	}
	// A stopped sidecar with rules in force: left behind.
	if v := c.Verdict(context.Background(), "inactive"); v.State != Fail {
		t.Errorf("inactive: got %s, want fail for rules left behind", v.State)
	}
	// An environment file istio-proxy could have written is not read.
	os.Chown(filepath.Join(dir, "run/meshvm/sidecar.env"), 1337, 1337)
	if v := c.Verdict(context.Background(), "active"); v.State != Skipped || !strings.Contains(v.Checks[0].Detail, "sidecar environment") {
		t.Errorf("got %s %+v, want skipped: the environment is not root's", v.State, v.Checks)
	}
}

// Verdicts asked at once share one read of the rules: a burst of GetStatus
// runs one set of iptables-save, not one per caller.
func TestConcurrentVerdictsShareOneRead(t *testing.T) {
	root, err := fsroot.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int32
	release := make(chan struct{})
	c := &Checker{Root: root, EnvPath: "/run/meshvm/sidecar.env", Read: func(context.Context) Saves {
		reads.Add(1)
		<-release
		return Saves{Out: map[string][]byte{}, Err: map[string]error{}}
	}}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { c.Verdict(context.Background(), "inactive") })
	}
	for reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the other 19 arrive while the first reads
	close(release)
	wg.Wait()
	if n := reads.Load(); n != 1 {
		t.Errorf("20 verdicts at once read the rules %d times, want once", n)
	}
	c.Verdict(context.Background(), "inactive")
	if n := reads.Load(); n != 2 {
		t.Errorf("a verdict after them read %d times in all, want a fresh read (2)", n)
	}
}
