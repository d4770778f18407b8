// Package capture judges the traffic capture rules in force on the VM:
// which iptables backend holds Istio's chains (exactly one must), and where
// the kernel's nat table sends the connections that matter: the app's
// inbound ports to 15006, its outbound traffic to 15001, DNS to 15053 when
// DNS capture is on, and neither the agent's port nor istio-proxy's own
// traffic anywhere. It reads the rules with the read-only iptables-save
// tools of both backends and sends test packets through a small evaluator
// of the nat table, so the verdict is about the rules the kernel holds, not
// about what istio-iptables was asked to do. Istio's own validator, which
// proves the redirect with a real connection, runs in `vmagent sidecar
// prepare` (see Validate); its record joins the verdict.
//
// The agent runs as root: the tools run with a fixed PATH and locale and
// nothing else in their environment, bounded in time and output, and the
// expectations come from the sidecar environment root wrote itself.
package capture

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/vmagent/internal/capbuf"
)

// State is the vocabulary of a verdict and of each check.
type State string

const (
	OK   State = "ok"
	Fail State = "fail"
	// Off means no capture is expected (the sidecar is stopped, or the
	// operator owns the rules) and none is in force.
	Off State = "off"
	// Skipped is a check that could not run; the detail says why.
	Skipped State = "skipped"
)

// Backend names, as netcheck names them.
const (
	BackendLegacy = "iptables-legacy"
	BackendNFT    = "iptables-nft"
)

// Check is one thing the verdict looked at.
type Check struct {
	Name   string
	State  State
	Detail string
	// Fix is the next step on the VM when State is Fail.
	Fix string
}

// Verdict is the judgement on the capture rules in force.
type Verdict struct {
	State State
	// Backends lists the backends holding Istio's nat chains, sorted.
	Backends []string
	Checks   []Check
	// Validation is Istio's validator's record at the sidecar's last start.
	Validation *Validation
}

// Problem returns the first failed check, if any.
func (v Verdict) Problem() (Check, bool) {
	for _, c := range v.Checks {
		if c.State == Fail {
			return c, true
		}
	}
	return Check{}, false
}

// Expect is what the rules should do, from the sidecar's environment.
type Expect struct {
	// Active says the sidecar runs (or is starting): rules are expected.
	Active bool
	// Env is the sidecar environment `vmagent sidecar prepare` wrote.
	Env map[string]string
	// AgentPort is vmagent's port, exempt both ways.
	AgentPort int
	// Addr is the VM's address (INSTANCE_IP) and Iface the interface it is on.
	Addr  netip.Addr
	Iface string
	// Nameservers are the VM's resolvers (/etc/resolv.conf).
	Nameservers []netip.Addr
}

// Saves is the iptables-save output of each backend and family; a missing
// key means that tool is not installed, an Err entry that it failed.
type Saves struct {
	Out map[string][]byte // "iptables-legacy-save", "ip6tables-nft-save", ...
	Err map[string]error
}

var saveTools = []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"}

// Limits of one tool run.
const (
	toolTimeout = 10 * time.Second
	maxToolOut  = 8 << 20
	toolPath    = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
)

// DefaultDirs are where the tools are looked for: root's, never $PATH.
var DefaultDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// Read runs the iptables-save tools of both backends, each bounded.
func Read(ctx context.Context, dirs []string) Saves {
	if len(dirs) == 0 {
		dirs = DefaultDirs
	}
	s := Saves{Out: map[string][]byte{}, Err: map[string]error{}}
	for _, name := range saveTools {
		path := lookPath(dirs, name)
		if path == "" {
			continue
		}
		out, _, err := runBounded(ctx, toolTimeout, nil, path)
		if err != nil {
			s.Err[name] = err
			continue
		}
		s.Out[name] = out
	}
	return s
}

func lookPath(dirs []string, name string) string {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// runBounded runs a program (never a shell) with a fixed environment, a
// deadline and a cap on its output; extra sets SysProcAttr and such. A
// failure carries the last line of stderr.
func runBounded(ctx context.Context, timeout time.Duration, extra func(*exec.Cmd), path string, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{toolPath, "LC_ALL=C"}
	cmd.Dir = "/"
	cmd.WaitDelay = 2 * time.Second
	// Too much output ends the program at once, as the deadline does.
	out, errOut := &capbuf.Buffer{Max: maxToolOut, OnOverflow: cancel}, &capbuf.Buffer{Max: 64 << 10, OnOverflow: cancel}
	cmd.Stdout, cmd.Stderr = out, errOut
	if extra != nil {
		extra(cmd)
	}
	err = cmd.Run()
	switch {
	case out.Truncated() || errOut.Truncated():
		err = fmt.Errorf("%s: more than %d bytes of output", path, maxToolOut)
	case ctx.Err() != nil:
		err = fmt.Errorf("%s: did not finish in %s", path, timeout)
	case err != nil:
		err = fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, lastLine(errOut.Bytes()))
	}
	return out.Bytes(), errOut.Bytes(), err
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// Istio's ports.
const (
	inboundPort  = 15006
	outboundPort = 15001
	dnsPort      = 15053
	// appUID owns the app's test connections: any uid but the proxy's.
	appUID = 65534
)

// peer is where outbound test packets go when every address is captured:
// TEST-NET-1, never a real destination.
var peer = netip.MustParseAddr("192.0.2.10")

// NotApplicableProxyless is the verdict's detail on a VM without Envoy.
const NotApplicableProxyless = "not applicable: proxyless (DISABLE_ENVOY=true): pilot-agent runs without Envoy, so nothing is captured, and no backend holds Istio's rules"

// Held names the backends whose nat table (IPv4 or IPv6) holds Istio's chains.
func Held(saves Saves) []string {
	var out []string
	for _, name := range saveTools {
		rs, err := ParseSave(saves.Out[name])
		if err != nil || !hasIstio(rs["nat"]) {
			continue
		}
		b := BackendLegacy
		if strings.Contains(name, "nft") {
			b = BackendNFT
		}
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// Judge gives the verdict on the rules in saves against e.
func Judge(saves Saves, e Expect) Verdict {
	var v Verdict
	add := func(c Check) { v.Checks = append(v.Checks, c) }
	nat4 := map[string]Table{}
	held := map[string][]string{} // backend -> families holding ISTIO_ nat chains
	for _, name := range saveTools {
		backend, family := BackendLegacy, "IPv4"
		if strings.Contains(name, "nft") {
			backend = BackendNFT
		}
		if strings.HasPrefix(name, "ip6") {
			family = "IPv6"
		}
		if err := saves.Err[name]; err != nil {
			add(Check{Name: "read " + backend + " " + family, State: Skipped, Detail: err.Error()})
			continue
		}
		out, ok := saves.Out[name]
		if !ok {
			continue
		}
		rs, err := ParseSave(out)
		if err != nil {
			add(Check{Name: "read " + backend + " " + family, State: Fail, Detail: name + ": " + err.Error(),
				Fix: "run " + name + " on the VM and report its output: meshvm cannot read it"})
			continue
		}
		if hasIstio(rs["nat"]) {
			held[backend] = append(held[backend], family)
			if family == "IPv4" {
				nat4[backend] = rs["nat"]
			}
		}
	}
	for b := range held {
		v.Backends = append(v.Backends, b)
	}
	slices.Sort(v.Backends)
	where := func() string {
		var parts []string
		for _, b := range v.Backends {
			parts = append(parts, b+" ("+strings.Join(held[b], ", ")+")")
		}
		return strings.Join(parts, " and ")
	}

	custom := e.Env["ISTIO_CUSTOM_IP_TABLES"] == "true"
	switch {
	case custom:
		add(Check{Name: "backend", State: Skipped, Detail: "ISTIO_CUSTOM_IP_TABLES=true: the capture rules are the operator's, not checked"})
		v.State = Off
		return v
	case e.Env["NATIVE_NFTABLES"] == "true":
		add(Check{Name: "backend", State: Skipped, Detail: "NATIVE_NFTABLES=true: native nftables rules are not checked yet"})
		v.State = Off
		return v
	case e.Env["DISABLE_ENVOY"] == "true" && len(v.Backends) > 0:
		add(Check{Name: "backend", State: Fail,
			Detail: "pilot-agent runs without Envoy (DISABLE_ENVOY=true, proxyless), but " + where() + " hold Istio's capture rules: the VM's traffic goes to a proxy that is not there",
			Fix:    "restart the sidecar: its start removes them (or run `vmagent sidecar cleanup` on the VM)"})
		v.State = Fail
		return v
	case e.Env["DISABLE_ENVOY"] == "true":
		add(Check{Name: "backend", State: Skipped, Detail: NotApplicableProxyless})
		v.State = Off
		return v
	case !e.Active && len(v.Backends) > 0:
		add(Check{Name: "backend", State: Fail,
			Detail: "the sidecar is not running, but " + where() + " still hold Istio's capture rules: the VM's traffic goes to a proxy that is not there",
			Fix:    "remove them: run `vmagent sidecar cleanup` on the VM (or start the sidecar)"})
		v.State = Fail
		return v
	case !e.Active:
		add(Check{Name: "backend", State: OK, Detail: "the sidecar is not running and no backend holds capture rules"})
		v.State = Off
		return v
	case len(v.Backends) == 0:
		add(Check{Name: "backend", State: Fail,
			Detail: "the sidecar runs, but neither iptables-legacy nor iptables-nft holds Istio's capture rules: nothing reaches the proxy",
			Fix:    "restart the sidecar, and read istio-iptables' errors in its journal (journalctl -u istio)"})
	case len(v.Backends) > 1:
		add(Check{Name: "backend", State: Fail,
			Detail: "capture rules are installed in both " + where() + ": each copy captures, and Istio's cleanup removes only one",
			Fix:    "restart the sidecar: vmagent's cleanup removes the rules from both backends before installing them in one"})
	default:
		add(Check{Name: "backend", State: OK, Detail: "only " + where() + " holds Istio's capture rules"})
	}
	for _, b := range v.Backends {
		if t, ok := nat4[b]; ok {
			for _, c := range judgeTable(t, e) {
				if len(v.Backends) > 1 {
					c.Name = b + ": " + c.Name
				}
				add(c)
			}
		}
	}
	v.State = OK
	if _, bad := v.Problem(); bad {
		v.State = Fail
	}
	return v
}

func hasIstio(t Table) bool {
	for c := range t {
		if strings.HasPrefix(c, "ISTIO_") {
			return true
		}
	}
	return false
}

// judgeTable sends the test packets through one backend's IPv4 nat table.
func judgeTable(t Table, e Expect) []Check {
	var out []Check
	env := e.Env
	proxyUID := atoiOr(env["PROXY_UID"], 1337)
	proxyGID := atoiOr(env["PROXY_GID"], proxyUID)
	inTarget := atoiOr(env["INBOUND_CAPTURE_PORT"], inboundPort)
	outTarget := atoiOr(env["ENVOY_PORT"], outboundPort)
	addr := e.Addr
	if !addr.IsValid() {
		addr = netip.MustParseAddr("10.0.0.2")
	}
	iface := e.Iface
	if iface == "" {
		iface = "eth0"
	}
	in := func(port int) Packet {
		return Packet{Proto: "tcp", Src: peer, Dst: addr, SPort: 40000, DPort: port, In: iface, UID: -1, GID: -1}
	}
	expect := func(name string, o Outcome, want int, why string) {
		c := Check{Name: name, State: OK}
		got := "not redirected"
		if o.RedirectPort != 0 {
			got = "redirected to " + strconv.Itoa(o.RedirectPort)
		} else if o.Target != "ACCEPT" {
			got = o.Target
		}
		switch {
		case o.RedirectPort == want:
			c.Detail = got
			if o.Rule != "" {
				c.Detail += " (" + o.Rule + ")"
			}
		default:
			wantS := "not redirected"
			if want != 0 {
				wantS = "redirected to " + strconv.Itoa(want)
			}
			c.State, c.Detail = Fail, fmt.Sprintf("%s, want %s", got, wantS)
			if o.Rule != "" {
				c.Detail += " (by " + o.Rule + ")"
			}
			c.Fix = why
		}
		if len(o.Unknown) > 0 && c.State == OK {
			c.Detail += "; rules meshvm cannot read were passed over: " + strings.Join(o.Unknown, " | ")
		}
		out = append(out, c)
	}
	restart := "restart the sidecar so istio-iptables installs the rules afresh; if it persists, check cluster.env's ISTIO_* capture settings"

	// Inbound: the app's ports to 15006, the excluded ones and the agent's untouched.
	inbound := strings.TrimSpace(env["ISTIO_INBOUND_PORTS"])
	exclude := portsOf(env["ISTIO_LOCAL_EXCLUDE_PORTS"])
	switch inbound {
	case "":
		out = append(out, Check{Name: "inbound", State: Skipped, Detail: "ISTIO_INBOUND_PORTS is empty: no inbound capture is configured"})
	case "*":
		p := 8000
		for slices.Contains(exclude, p) || p == e.AgentPort {
			p++
		}
		expect(fmt.Sprintf("inbound :%d -> %d", p, inTarget), t.Eval("PREROUTING", in(p)), inTarget, restart)
	default:
		for _, p := range portsOf(inbound) {
			expect(fmt.Sprintf("inbound :%d -> %d", p, inTarget), t.Eval("PREROUTING", in(p)), inTarget, restart)
		}
	}
	for _, p := range exclude {
		expect(fmt.Sprintf("inbound :%d exempt", p), t.Eval("PREROUTING", in(p)), 0,
			"a port in ISTIO_LOCAL_EXCLUDE_PORTS is captured: "+restart)
	}
	if e.AgentPort != 0 {
		expect(fmt.Sprintf("agent :%d exempt inbound", e.AgentPort), t.Eval("PREROUTING", in(e.AgentPort)), 0,
			fmt.Sprintf("connections to the agent go to the proxy: list the app's ports in the WorkloadGroup (so only those are captured) or add %d to ISTIO_LOCAL_EXCLUDE_PORTS in cluster.env, then restart the sidecar", e.AgentPort))
		reply := Packet{Proto: "tcp", Src: addr, Dst: peer, SPort: e.AgentPort, DPort: 40000, Out: iface, UID: 0, GID: 0}
		expect(fmt.Sprintf("agent :%d replies exempt", e.AgentPort), t.Eval("OUTPUT", reply), 0,
			"the `--sport "+strconv.Itoa(e.AgentPort)+" -j RETURN` rule in nat OUTPUT is missing: restart the sidecar (vmagent sidecar prepare adds it)")
	}

	// Outbound: the app's to 15001, the proxy's own untouched.
	dst := peer
	switch cidr := strings.TrimSpace(env["ISTIO_SERVICE_CIDR"]); cidr {
	case "":
		out = append(out, Check{Name: "outbound", State: Skipped, Detail: "ISTIO_SERVICE_CIDR is empty: no outbound capture is configured"})
		dst = netip.Addr{}
	case "*":
	default:
		first, _, _ := strings.Cut(cidr, ",")
		if pfx, err := netip.ParsePrefix(strings.TrimSpace(first)); err == nil {
			dst = pfx.Masked().Addr().Next()
		}
	}
	if dst.IsValid() {
		app := Packet{Proto: "tcp", Src: addr, Dst: dst, SPort: 40000, DPort: 5000, Out: iface, UID: appUID, GID: appUID}
		expect(fmt.Sprintf("outbound app -> %d", outTarget), t.Eval("OUTPUT", app), outTarget, restart)
		proxy := app
		proxy.UID, proxy.GID = proxyUID, proxyGID
		expect(fmt.Sprintf("outbound uid %d exempt", proxyUID), t.Eval("OUTPUT", proxy), 0,
			"istio-proxy's own traffic is captured (a loop): check PROXY_UID/PROXY_GID and restart the sidecar")
	}

	// DNS: the rules judged are IPv4's, so the first IPv4 resolver, or any
	// address when all DNS is captured.
	dns := env["ISTIO_META_DNS_CAPTURE"] == "true" || env["REDIRECT_DNS"] == "true"
	all := env["CAPTURE_ALL_DNS"] == "true"
	ns := netip.Addr{}
	for _, a := range e.Nameservers {
		if a.Is4() {
			ns = a
			break
		}
	}
	if !ns.IsValid() && all {
		ns = peer
	}
	switch {
	case !dns:
		out = append(out, Check{Name: "dns", State: Skipped, Detail: "DNS capture is off (ISTIO_META_DNS_CAPTURE)"})
	case !ns.IsValid():
		out = append(out, Check{Name: "dns", State: Skipped, Detail: "DNS capture is on but /etc/resolv.conf names no IPv4 nameserver"})
	default:
		src, o := addr, iface
		if ns.IsLoopback() {
			src, o = netip.MustParseAddr("127.0.0.1"), "lo"
		}
		for _, proto := range []string{"udp", "tcp"} {
			q := Packet{Proto: proto, Src: src, Dst: ns, SPort: 40000, DPort: 53, Out: o, UID: appUID, GID: appUID}
			expect(fmt.Sprintf("dns %s %s:53 -> %d", proto, ns, dnsPort), t.Eval("OUTPUT", q), dnsPort, restart)
		}
	}
	return out
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
		return n
	}
	return def
}

func portsOf(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 && n < 65536 {
			out = append(out, n)
		}
	}
	return out
}
