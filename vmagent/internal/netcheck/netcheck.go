// Package netcheck reports what the network looks like to the sidecar: the
// interfaces and their addresses, the default routes, the address
// pilot-agent will register as INSTANCE_IP, and which firewall backends are
// usable and still hold Istio's capture rules.
//
// Interfaces and routes come from netlink. Firewall state comes from the
// real tools (iptables-legacy-save, iptables-nft-save, nft), because those
// are what `pilot-agent istio-iptables` drives and what an operator would
// run by hand. Only the read-only `-save` and `list` commands are used:
// `iptables-legacy -L` would create empty legacy tables, and istio-iptables
// picks the legacy backend whenever legacy tables exist.
package netcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options says what to check and where.
type Options struct {
	// SvcIP is ISTIO_SVC_IP from cluster.env; empty when it is not set.
	SvcIP string
	// NetNS is the path of a network namespace to run the whole check in,
	// such as /run/netns/NAME. Empty means the caller's namespace.
	NetNS string
	// SearchPath lists the directories searched for the firewall tools, in
	// order. Empty means $PATH followed by /usr/sbin, /usr/bin, /sbin and
	// /bin, so the tools are found even when PATH lacks the sbin dirs.
	SearchPath []string
}

// Report is what Check found.
type Report struct {
	Interfaces       []Interface
	DefaultRoutes    []Route
	FirewallBackends []Backend
	// SidecarAddress is the address pilot-agent will use as INSTANCE_IP,
	// empty when there is none. SidecarAddressSource says where it came
	// from, or why there is none.
	SidecarAddress       string
	SidecarAddressSource string
}

// Interface is one network link, in kernel index order.
type Interface struct {
	Name string
	// Up is the administrative state (IFF_UP); OperState is the kernel's
	// operational state ("up", "down", "lowerlayerdown", "unknown", ...).
	Up        bool
	OperState string
	MAC       string
	MTU       int
	// Addresses in CIDR notation, IPv4 first, as the kernel lists them.
	Addresses []string
}

// Route is one default route of the main table.
type Route struct {
	Destination string // 0.0.0.0/0 or ::/0
	Gateway     string // empty for an on-link default route
	Interface   string
}

// Backend is one way of installing capture rules.
type Backend struct {
	// Name is BackendLegacy, BackendIptablesNFT or BackendNFT.
	Name string
	// Available is true when the backend's tools ran successfully.
	Available bool
	// IstioChains lists, sorted, what Istio left in this backend: "nat/ISTIO_OUTPUT"
	// (IPv4) or "ip6:nat/ISTIO_OUTPUT" for iptables, and
	// "inet istio-proxy-nat/output" for native nftables (a table with no
	// chains is listed by itself).
	IstioChains []string
	// Err says why the backend is unavailable, or what part of the check
	// failed; empty when all went well.
	Err string
}

// Firewall backend names.
const (
	BackendLegacy      = "iptables-legacy"
	BackendIptablesNFT = "iptables-nft"
	BackendNFT         = "nft"
)

// LeftoverIstioChains returns every Istio chain any backend still holds,
// each prefixed with its backend ("iptables-nft nat/ISTIO_OUTPUT"). With the
// sidecar stopped the list should be empty: anything in it is capture rules
// `pilot-agent istio-iptables --cleanup-only` did not remove, which still
// redirect the VM's traffic to a proxy that is not there.
func (r Report) LeftoverIstioChains() []string {
	var out []string
	for _, b := range r.FirewallBackends {
		for _, c := range b.IstioChains {
			out = append(out, b.Name+" "+c)
		}
	}
	return out
}

// Check inspects the network, inside opts.NetNS when it is set. Only
// netlink failures are errors; a firewall backend that cannot be read is
// reported in its Backend.Err.
func Check(ctx context.Context, opts Options) (Report, error) {
	if opts.NetNS == "" {
		return check(ctx, opts)
	}
	ns, err := netns.GetFromPath(opts.NetNS)
	if err != nil {
		return Report{}, fmt.Errorf("open network namespace %s: %w; pass the path of an existing namespace, such as /run/netns/NAME from `ip netns add NAME`", opts.NetNS, err)
	}
	defer ns.Close()

	type result struct {
		rep Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread enters the namespace and never leaves: without
		// UnlockOSThread the runtime ends the thread with this goroutine,
		// so no other goroutine ever runs in the wrong namespace. Netlink
		// sockets opened and processes started here belong to ns.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- result{err: fmt.Errorf("enter network namespace %s: %w; the agent needs CAP_SYS_ADMIN to check another namespace", opts.NetNS, err)}
			return
		}
		rep, err := check(ctx, opts)
		done <- result{rep, err}
	}()
	res := <-done
	return res.rep, res.err
}

// check runs on the calling thread's network namespace.
func check(ctx context.Context, opts Options) (Report, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return Report{}, fmt.Errorf("open netlink socket: %w", err)
	}
	defer h.Close()

	links, err := retryDump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		return Report{}, fmt.Errorf("list network interfaces: %w", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })

	var rep Report
	names := make(map[int]string, len(links))
	var cands []candidate
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		ifc := Interface{
			Name:      a.Name,
			Up:        a.Flags&net.FlagUp != 0,
			OperState: a.OperState.String(),
			MAC:       a.HardwareAddr.String(),
			MTU:       a.MTU,
		}
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return Report{}, fmt.Errorf("list addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ad.IPNet == nil {
				continue
			}
			ifc.Addresses = append(ifc.Addresses, ad.IPNet.String())
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			cands = append(cands, candidate{
				iface:  a.Name,
				ip:     ip.Unmap(),
				usable: ifc.Up && a.Flags&net.FlagLoopback == 0 && ad.Scope == unix.RT_SCOPE_UNIVERSE,
			})
		}
		rep.Interfaces = append(rep.Interfaces, ifc)
	}

	routes, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return Report{}, fmt.Errorf("list routes: %w", err)
	}
	rep.DefaultRoutes = defaultRoutes(routes, names)
	rep.SidecarAddress, rep.SidecarAddressSource = sidecarAddress(opts.SvcIP, cands)
	rep.FirewallBackends = firewallBackends(ctx, newTools(opts.SearchPath))
	return rep, nil
}

// retryDump repeats a netlink dump the kernel interrupted because the
// table changed under it.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range 5 {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

func defaultRoutes(routes []netlink.Route, names map[int]string) []Route {
	var out []Route
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST || (r.Dst != nil && !isZeroPrefix(r.Dst)) {
			continue
		}
		dst := "0.0.0.0/0"
		if r.Family == unix.AF_INET6 {
			dst = "::/0"
		}
		if len(r.MultiPath) > 0 {
			for _, nh := range r.MultiPath {
				out = append(out, Route{Destination: dst, Gateway: ipString(nh.Gw), Interface: names[nh.LinkIndex]})
			}
			continue
		}
		out = append(out, Route{Destination: dst, Gateway: ipString(r.Gw), Interface: names[r.LinkIndex]})
	}
	return out
}

func isZeroPrefix(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

type candidate struct {
	iface  string
	ip     netip.Addr
	usable bool // global scope, on an up, non-loopback interface
}

// sidecarAddress picks INSTANCE_IP the way istio-start.sh does: ISTIO_SVC_IP
// when cluster.env sets it, else the first word of `hostname
// --all-ip-addresses`. hostname lists IPv4 addresses before IPv6 ones
// (getifaddrs' order), each in interface order, skipping loopback and down
// interfaces; of those, only global-scope addresses are usable by a proxy
// that other workloads must reach.
func sidecarAddress(svcIP string, cands []candidate) (addr, source string) {
	if svcIP != "" {
		ip, err := netip.ParseAddr(svcIP)
		switch {
		case err != nil:
			return svcIP, "ISTIO_SVC_IP in cluster.env (not an IP address: fix cluster.env)"
		case !slices.ContainsFunc(cands, func(c candidate) bool { return c.ip == ip.Unmap() }):
			return svcIP, "ISTIO_SVC_IP in cluster.env (not on any interface of this VM: fine behind NAT, otherwise fix cluster.env)"
		}
		return svcIP, "ISTIO_SVC_IP in cluster.env"
	}
	for _, v4 := range []bool{true, false} {
		for _, c := range cands {
			if c.usable && c.ip.Is4() == v4 {
				return c.ip.String(), fmt.Sprintf("first global address on %s, as `hostname --all-ip-addresses` picks it", c.iface)
			}
		}
	}
	return "", "none: ISTIO_SVC_IP is not set in cluster.env and no up, non-loopback interface has a global address; give the VM a routable address or set ISTIO_SVC_IP"
}

// joinNonEmpty joins the non-empty parts with "; ".
func joinNonEmpty(parts ...string) string {
	return strings.Join(slices.DeleteFunc(parts, func(s string) bool { return s == "" }), "; ")
}
