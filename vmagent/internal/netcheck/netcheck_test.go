package netcheck

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// These tests build real network namespaces with `ip netns add` and a veth
// pair (no dummy interfaces: the lab kernel has no modules), and install
// chains with the real iptables-legacy, iptables-nft and nft inside them.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (run the tests as root)")
	}
}

func requireTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("needs %s: apt-get install iproute2 iptables nftables (%v)", n, err)
		}
	}
}

// newNetNS creates a uniquely named network namespace, removed when the
// test ends, and returns its name.
func newNetNS(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	requireTools(t, "ip")
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "nctest-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

func nsPath(name string) string { return filepath.Join("/run/netns", name) }

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// nsRun runs a command inside the namespace.
func nsRun(t *testing.T, ns string, args ...string) {
	t.Helper()
	run(t, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// addVeth creates veth0 and veth1 inside ns, peers of each other, with no
// automatic IPv6 link-local address so each test sees only what it added.
func addVeth(t *testing.T, ns string) {
	t.Helper()
	nsRun(t, ns, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	for _, l := range []string{"veth0", "veth1"} {
		nsRun(t, ns, "ip", "link", "set", "dev", l, "addrgenmode", "none")
	}
}

func mustCheck(t *testing.T, opts Options) Report {
	t.Helper()
	rep, err := Check(context.Background(), opts)
	if err != nil {
		t.Fatalf("Check(%+v): %v", opts, err)
	}
	return rep
}

func TestInterfacesAndDefaultRoutes(t *testing.T) {
	ns := newNetNS(t)
	addVeth(t, ns)
	for _, c := range [][]string{
		{"ip", "link", "set", "dev", "veth0", "address", "02:00:00:00:77:02", "mtu", "1400"},
		{"ip", "link", "set", "dev", "veth1", "address", "02:00:00:00:77:01"},
		{"ip", "addr", "add", "10.77.0.2/24", "dev", "veth0"},
		{"ip", "addr", "add", "fd00:77::2/64", "dev", "veth0", "nodad"},
		{"ip", "link", "set", "dev", "veth0", "up"},
		{"ip", "link", "set", "dev", "veth1", "up"},
		{"ip", "route", "add", "default", "via", "10.77.0.1", "dev", "veth0"},
		{"ip", "-6", "route", "add", "default", "via", "fd00:77::1", "dev", "veth0"},
	} {
		nsRun(t, ns, c...)
	}
	rep := mustCheck(t, Options{NetNS: nsPath(ns)})

	byName := map[string]Interface{}
	for i, ifc := range rep.Interfaces {
		byName[ifc.Name] = ifc
		if i > 0 && ifc.Name == "lo" {
			t.Errorf("interface order: got lo at position %d, want it first (index order)", i)
		}
	}
	if len(rep.Interfaces) != 3 {
		t.Errorf("interfaces: got %d (%v), want 3 (lo, veth0, veth1)", len(rep.Interfaces), rep.Interfaces)
	}
	tests := []struct {
		name  string
		iface string
		want  Interface
	}{
		{
			name:  "loopback is down in a new namespace",
			iface: "lo",
			want:  Interface{Name: "lo", Up: false, OperState: "down", MAC: "", MTU: 65536},
		},
		{
			name:  "veth with IPv4 and IPv6 addresses",
			iface: "veth0",
			want: Interface{Name: "veth0", Up: true, OperState: "up", MAC: "02:00:00:00:77:02", MTU: 1400,
				Addresses: []string{"10.77.0.2/24", "fd00:77::2/64"}},
		},
		{
			name:  "veth without addresses",
			iface: "veth1",
			want:  Interface{Name: "veth1", Up: true, OperState: "up", MAC: "02:00:00:00:77:01", MTU: 1500},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := byName[tt.iface]
			if !ok {
				t.Fatalf("interface %s: got none, want %+v", tt.iface, tt.want)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("interface %s: got %+v, want %+v (-want +got):\n%s", tt.iface, got, tt.want, diff)
			}
		})
	}

	wantRoutes := []Route{
		{Destination: "0.0.0.0/0", Gateway: "10.77.0.1", Interface: "veth0"},
		{Destination: "::/0", Gateway: "fd00:77::1", Interface: "veth0"},
	}
	if diff := cmp.Diff(wantRoutes, rep.DefaultRoutes); diff != "" {
		t.Errorf("default routes: got %+v, want %+v (-want +got):\n%s", rep.DefaultRoutes, wantRoutes, diff)
	}
}

func TestSidecarAddress(t *testing.T) {
	tests := []struct {
		name       string
		setup      [][]string
		svcIP      string
		wantAddr   string
		wantSource string // substring
	}{
		{
			name:       "ISTIO_SVC_IP wins over interface addresses",
			setup:      [][]string{{"ip", "addr", "add", "10.77.0.2/24", "dev", "veth0"}},
			svcIP:      "10.77.0.2",
			wantAddr:   "10.77.0.2",
			wantSource: "ISTIO_SVC_IP in cluster.env",
		},
		{
			name:       "ISTIO_SVC_IP not on any interface is kept but flagged",
			setup:      [][]string{{"ip", "addr", "add", "10.77.0.2/24", "dev", "veth0"}},
			svcIP:      "192.0.2.9",
			wantAddr:   "192.0.2.9",
			wantSource: "not on any interface",
		},
		{
			name:       "ISTIO_SVC_IP that is not an address is flagged",
			svcIP:      "vm1.example",
			wantAddr:   "vm1.example",
			wantSource: "not an IP address",
		},
		{
			name:       "first global address",
			setup:      [][]string{{"ip", "addr", "add", "10.77.0.2/24", "dev", "veth0"}},
			wantAddr:   "10.77.0.2",
			wantSource: "first global address on veth0",
		},
		{
			name: "IPv4 before IPv6 like hostname --all-ip-addresses",
			setup: [][]string{
				{"ip", "addr", "add", "fd00:77::2/64", "dev", "veth0", "nodad"},
				{"ip", "addr", "add", "10.78.0.2/24", "dev", "veth1"},
			},
			wantAddr:   "10.78.0.2",
			wantSource: "first global address on veth1",
		},
		{
			name:       "IPv6 only",
			setup:      [][]string{{"ip", "addr", "add", "fd00:77::2/64", "dev", "veth0", "nodad"}},
			wantAddr:   "fd00:77::2",
			wantSource: "first global address on veth0",
		},
		{
			name: "down interface is skipped",
			setup: [][]string{
				{"ip", "addr", "add", "10.77.0.2/24", "dev", "veth0"},
				{"ip", "addr", "add", "10.78.0.2/24", "dev", "veth1"},
				{"ip", "link", "set", "dev", "veth0", "down"},
			},
			wantAddr:   "10.78.0.2",
			wantSource: "first global address on veth1",
		},
		{
			name: "loopback and link-scope addresses only",
			setup: [][]string{
				{"ip", "link", "set", "dev", "lo", "up"},
				{"ip", "addr", "add", "169.254.7.2/16", "dev", "veth0", "scope", "link"},
				{"ip", "addr", "add", "fe80::7:2/64", "dev", "veth0", "nodad"},
			},
			wantAddr:   "",
			wantSource: "give the VM a routable address or set ISTIO_SVC_IP",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newNetNS(t)
			addVeth(t, ns)
			nsRun(t, ns, "ip", "link", "set", "dev", "veth0", "up")
			nsRun(t, ns, "ip", "link", "set", "dev", "veth1", "up")
			for _, c := range tt.setup {
				nsRun(t, ns, c...)
			}
			rep := mustCheck(t, Options{NetNS: nsPath(ns), SvcIP: tt.svcIP})
			if rep.SidecarAddress != tt.wantAddr {
				t.Errorf("sidecar address: got %q, want %q (source %q)", rep.SidecarAddress, tt.wantAddr, rep.SidecarAddressSource)
			}
			if !strings.Contains(rep.SidecarAddressSource, tt.wantSource) {
				t.Errorf("sidecar address source: got %q, want it to contain %q", rep.SidecarAddressSource, tt.wantSource)
			}
		})
	}
}

func TestFirewallBackends(t *testing.T) {
	tests := []struct {
		name    string
		tools   []string
		install [][]string
		remove  [][]string
		want    map[string][]string // backend -> chains; missing backends want none
	}{
		{
			name:  "iptables-legacy in nat and mangle",
			tools: []string{"iptables-legacy", "iptables-legacy-save"},
			install: [][]string{
				{"iptables-legacy", "-t", "nat", "-N", "ISTIO_INBOUND"},
				{"iptables-legacy", "-t", "nat", "-N", "ISTIO_OUTPUT"},
				{"iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"},
				{"iptables-legacy", "-t", "mangle", "-N", "ISTIO_DIVERT"},
				{"iptables-legacy", "-t", "nat", "-N", "NOT_ISTIO"},
			},
			remove: [][]string{
				{"iptables-legacy", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"},
				{"iptables-legacy", "-t", "nat", "-X", "ISTIO_INBOUND"},
				{"iptables-legacy", "-t", "nat", "-X", "ISTIO_OUTPUT"},
				{"iptables-legacy", "-t", "mangle", "-X", "ISTIO_DIVERT"},
			},
			want: map[string][]string{BackendLegacy: {"mangle/ISTIO_DIVERT", "nat/ISTIO_INBOUND", "nat/ISTIO_OUTPUT"}},
		},
		{
			name:  "iptables-nft for IPv4 and IPv6",
			tools: []string{"iptables-nft", "ip6tables-nft", "iptables-nft-save"},
			install: [][]string{
				{"iptables-nft", "-t", "nat", "-N", "ISTIO_OUTPUT"},
				{"iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"},
				{"iptables-nft", "-t", "raw", "-N", "ISTIO_OUTPUT_DNS"},
				{"ip6tables-nft", "-t", "nat", "-N", "ISTIO_REDIRECT"},
			},
			remove: [][]string{
				{"iptables-nft", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"},
				{"iptables-nft", "-t", "nat", "-X", "ISTIO_OUTPUT"},
				{"iptables-nft", "-t", "raw", "-X", "ISTIO_OUTPUT_DNS"},
				{"ip6tables-nft", "-t", "nat", "-X", "ISTIO_REDIRECT"},
			},
			want: map[string][]string{BackendIptablesNFT: {"ip6:nat/ISTIO_REDIRECT", "nat/ISTIO_OUTPUT", "raw/ISTIO_OUTPUT_DNS"}},
		},
		{
			name:  "native nftables tables",
			tools: []string{"nft"},
			install: [][]string{
				{"nft", "add", "table", "inet", "istio-proxy-nat"},
				{"nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ type nat hook output priority -100 ; }"},
				{"nft", "add", "chain", "inet", "istio-proxy-nat", "istio-output"},
				{"nft", "add", "table", "inet", "istio-proxy-mangle"},
				{"nft", "add", "table", "inet", "not-istio"},
				{"nft", "add", "chain", "inet", "not-istio", "istio-output"},
			},
			remove: [][]string{
				{"nft", "delete", "table", "inet", "istio-proxy-nat"},
				{"nft", "delete", "table", "inet", "istio-proxy-mangle"},
			},
			want: map[string][]string{BackendNFT: {"inet istio-proxy-mangle", "inet istio-proxy-nat/istio-output", "inet istio-proxy-nat/output"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireTools(t, append([]string{"iptables-legacy-save", "iptables-nft-save", "nft"}, tt.tools...)...)
			ns := newNetNS(t)
			addVeth(t, ns)
			for _, c := range tt.install {
				nsRun(t, ns, c...)
			}
			rep := mustCheck(t, Options{NetNS: nsPath(ns)})
			checkBackends(t, "installed", rep, tt.want)

			var wantLeft []string
			for b, chains := range tt.want {
				for _, c := range chains {
					wantLeft = append(wantLeft, b+" "+c)
				}
			}
			gotLeft := rep.LeftoverIstioChains()
			slices.Sort(gotLeft)
			slices.Sort(wantLeft)
			if !slices.Equal(gotLeft, wantLeft) {
				t.Errorf("installed: leftover chains: got %q, want %q", gotLeft, wantLeft)
			}

			for _, c := range tt.remove {
				nsRun(t, ns, c...)
			}
			rep = mustCheck(t, Options{NetNS: nsPath(ns)})
			checkBackends(t, "removed", rep, nil)
			if got := rep.LeftoverIstioChains(); len(got) != 0 {
				t.Errorf("removed: leftover chains: got %q, want none", got)
			}
		})
	}
}

func checkBackends(t *testing.T, stage string, rep Report, want map[string][]string) {
	t.Helper()
	var names []string
	for _, b := range rep.FirewallBackends {
		names = append(names, b.Name)
		if !b.Available || b.Err != "" {
			t.Errorf("%s: backend %s: got available=%v err=%q, want available with no error", stage, b.Name, b.Available, b.Err)
		}
		if !slices.Equal(b.IstioChains, want[b.Name]) {
			t.Errorf("%s: backend %s: got chains %q, want %q", stage, b.Name, b.IstioChains, want[b.Name])
		}
	}
	wantNames := []string{BackendLegacy, BackendIptablesNFT, BackendNFT}
	if !slices.Equal(names, wantNames) {
		t.Errorf("%s: backends: got %q, want %q", stage, names, wantNames)
	}
}

func TestMissingTools(t *testing.T) {
	type backendWant struct {
		available bool
		err       string // substring; empty wants no error
	}
	tests := []struct {
		name  string
		tools []string // linked into the search dir
		want  map[string]backendWant
	}{
		{
			name: "nothing installed",
			want: map[string]backendWant{
				BackendLegacy:      {false, "iptables-legacy-save: not installed"},
				BackendIptablesNFT: {false, "install the iptables package"},
				BackendNFT:         {false, "install the nftables package"},
			},
		},
		{
			name:  "only nft",
			tools: []string{"nft"},
			want: map[string]backendWant{
				BackendLegacy:      {false, "install the iptables package"},
				BackendIptablesNFT: {false, "iptables-nft-save: not installed"},
				BackendNFT:         {true, ""},
			},
		},
		{
			name:  "iptables-nft without ip6tables",
			tools: []string{"iptables-nft-save"},
			want: map[string]backendWant{
				BackendLegacy:      {false, "install the iptables package"},
				BackendIptablesNFT: {true, "IPv6 rules were not checked"},
				BackendNFT:         {false, "install the nftables package"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newNetNS(t)
			dir := t.TempDir()
			for _, name := range tt.tools {
				requireTools(t, name)
				p, _ := exec.LookPath(name)
				// A symlink keeps argv[0], which xtables-nft-multi dispatches on.
				if err := os.Symlink(p, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			rep := mustCheck(t, Options{NetNS: nsPath(ns), SearchPath: []string{dir}})
			if len(rep.FirewallBackends) != len(tt.want) {
				t.Fatalf("backends: got %d, want %d", len(rep.FirewallBackends), len(tt.want))
			}
			for _, b := range rep.FirewallBackends {
				w := tt.want[b.Name]
				if b.Available != w.available {
					t.Errorf("backend %s: got available=%v, want %v (err %q)", b.Name, b.Available, w.available, b.Err)
				}
				if w.err == "" && b.Err != "" || !strings.Contains(b.Err, w.err) {
					t.Errorf("backend %s: got err %q, want one containing %q", b.Name, b.Err, w.err)
				}
			}
		})
	}
}

// TestCurrentNamespace checks the agent's path (no NetNS) against the
// interfaces the Go runtime sees.
func TestCurrentNamespace(t *testing.T) {
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, i := range ifaces {
		want = append(want, i.Name)
	}
	rep := mustCheck(t, Options{})
	var got []string
	for _, i := range rep.Interfaces {
		got = append(got, i.Name)
	}
	if !slices.Equal(got, want) {
		t.Errorf("interfaces: got %q, want %q", got, want)
	}
}

func TestBadNamespace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-netns")
	_, err := Check(context.Background(), Options{NetNS: path})
	if err == nil {
		t.Fatalf("Check(NetNS: %s): got no error, want one naming the path", path)
	}
	for _, want := range []string{path, "ip netns add"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error: got %q, want it to contain %q", err, want)
		}
	}
}

func TestLeftoverIstioChains(t *testing.T) {
	tests := []struct {
		name string
		rep  Report
		want []string
	}{
		{name: "no backends", rep: Report{}, want: nil},
		{
			name: "chains from two backends, unavailable one ignored",
			rep: Report{FirewallBackends: []Backend{
				{Name: BackendLegacy, Err: "not installed"},
				{Name: BackendIptablesNFT, Available: true, IstioChains: []string{"nat/ISTIO_OUTPUT"}},
				{Name: BackendNFT, Available: true, IstioChains: []string{"inet istio-proxy-nat/output"}},
			}},
			want: []string{"iptables-nft nat/ISTIO_OUTPUT", "nft inet istio-proxy-nat/output"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.rep.LeftoverIstioChains(); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
