// Package dnscheck resolves a name the way the VM would and says who
// answered: the hosts file, one of resolv.conf's nameservers, or Istio's
// DNS proxy in pilot-agent.
//
// It asks each server itself (golang.org/x/net/dns/dnsmessage) rather than
// through net.Resolver: Go's resolver reads the machine's own /etc/hosts
// and resolv.conf before any pinned Dial, so it could answer from the hosts
// file and credit the server, which is the confusion this check exists to
// clear up.
//
// Names are looked up exactly as given, as if they ended with a dot: the
// search list and ndots of resolv.conf are not applied, so a check of
// istiod.istio-system.svc reports who answers for that name and not for a
// longer one the search list made up. Pass the full name.
package dnscheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Via selects who is asked.
type Via int

const (
	// ViaSystem follows the system resolver: the hosts file, then each
	// resolv.conf nameserver in order.
	ViaSystem Via = iota
	// ViaIstioProxy asks pilot-agent's DNS proxy only.
	ViaIstioProxy
)

func (v Via) String() string {
	switch v {
	case ViaSystem:
		return "system"
	case ViaIstioProxy:
		return "istio-proxy"
	}
	return "Via(" + strconv.Itoa(int(v)) + ")"
}

// ErrNotFound reports a name that does not exist (NXDOMAIN) or has no
// address records.
var ErrNotFound = errors.New("no such host")

// DefaultTimeout bounds one query to one server when Resolve is given no
// timeout; it is resolv.conf's default timeout.
const DefaultTimeout = 5 * time.Second

// maxNameservers is glibc's MAXNS: later nameserver lines are ignored.
const maxNameservers = 3

// Resolver says where the VM's resolver configuration lives.
type Resolver struct {
	HostsPath      string
	ResolvConfPath string
	IstioProxyAddr string // host:port of pilot-agent's DNS proxy

	// NameserverPort is dialled on each resolv.conf nameserver; 0 means 53.
	// resolv.conf cannot name a port, so tests point this at their server.
	NameserverPort int
}

// DefaultResolver returns the resolver of the machine whose root is root
// ("/" on the VM itself).
func DefaultResolver(root string) Resolver {
	root = strings.TrimSuffix(root, "/")
	return Resolver{
		HostsPath:      root + "/etc/hosts",
		ResolvConfPath: root + "/etc/resolv.conf",
		IstioProxyAddr: "127.0.0.1:15053",
	}
}

// Result is the outcome of one Resolve. Server is who answered: the hosts
// file's path or a nameserver's ip:port. It is set with an error too when a
// server answered that the name does not exist.
type Result struct {
	Addresses []string
	Server    string
	Latency   time.Duration
	Err       error
}

// Resolve looks name up for A and AAAA records through via. timeout bounds
// each query to one server; ctx bounds the whole call.
func (r Resolver) Resolve(ctx context.Context, name string, via Via, timeout time.Duration) Result {
	start := time.Now()
	res := r.resolve(ctx, name, via, timeout)
	res.Latency = time.Since(start)
	return res
}

func (r Resolver) resolve(ctx context.Context, name string, via Via, timeout time.Duration) Result {
	name = strings.TrimSuffix(name, ".")
	qname, err := dnsmessage.NewName(name + ".")
	if err == nil {
		// Packing checks what NewName does not: label lengths, empty labels.
		q := dnsmessage.Message{Questions: []dnsmessage.Question{{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
		_, err = q.Pack()
	}
	if err != nil || name == "" {
		return Result{Err: fmt.Errorf("%q is not a DNS name: pass a name such as istiod.istio-system.svc", name)}
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	switch via {
	case ViaIstioProxy:
		if r.IstioProxyAddr == "" {
			return Result{Err: errors.New("no Istio DNS proxy address configured: set it to pilot-agent's 127.0.0.1:15053")}
		}
		addrs, _, err := query(ctx, r.IstioProxyAddr, qname, timeout)
		if err != nil && !errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w; is the istio service running with ISTIO_META_DNS_CAPTURE=true?", err)
		}
		return Result{Addresses: addrs, Server: r.IstioProxyAddr, Err: err}

	case ViaSystem:
		addrs, err := lookupHosts(r.HostsPath, name)
		if err != nil {
			return Result{Err: err}
		}
		if len(addrs) > 0 {
			return Result{Addresses: addrs, Server: r.HostsPath}
		}
		servers, err := r.nameservers()
		if err != nil {
			return Result{Err: err}
		}
		var failed []error
		for _, s := range servers {
			addrs, answered, err := query(ctx, s, qname, timeout)
			if answered {
				return Result{Addresses: addrs, Server: s, Err: err}
			}
			failed = append(failed, err)
			if ctx.Err() != nil {
				break
			}
		}
		return Result{Err: fmt.Errorf("no nameserver in %s answered for %s: %w; check that they are reachable from the VM",
			r.ResolvConfPath, name, serverErrors(failed))}
	}
	return Result{Err: fmt.Errorf("unknown resolver %v: use ViaSystem or ViaIstioProxy", via)}
}

// nameservers reads resolv.conf's nameserver lines as ip:port.
func (r Resolver) nameservers() ([]string, error) {
	data, err := os.ReadFile(r.ResolvConfPath)
	if err != nil {
		return nil, fmt.Errorf("read resolver configuration: %w", err)
	}
	port := r.NameserverPort
	if port == 0 {
		port = 53
	}
	var servers []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		// glibc skips addresses it cannot parse; so does this.
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		servers = append(servers, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("no nameserver in %s: add a line such as \"nameserver 10.0.0.2\"", r.ResolvConfPath)
	}
	if len(servers) > maxNameservers {
		servers = servers[:maxNameservers]
	}
	return servers, nil
}

// lookupHosts returns every address the hosts file gives name, in file
// order, as glibc and Go do. A missing file is no match, not an error.
func lookupHosts(path, name string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read hosts file: %w", err)
	}
	var addrs []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil {
			continue
		}
		for _, n := range f[1:] {
			if strings.EqualFold(strings.TrimSuffix(n, "."), name) && !slices.Contains(addrs, ip.String()) {
				addrs = append(addrs, ip.String())
			}
		}
	}
	return addrs, nil
}

// query asks server for name's A and AAAA records. answered is true when
// the server gave a definite answer, addresses or "no such host", so the
// next nameserver would not be asked.
func query(ctx context.Context, server string, name dnsmessage.Name, timeout time.Duration) (addrs []string, answered bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var lastErr error
	for _, qtype := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
		msg, err := exchange(ctx, server, name, qtype)
		if err != nil {
			lastErr = err
			continue
		}
		switch msg.RCode {
		case dnsmessage.RCodeSuccess:
			addrs = append(addrs, answerAddrs(msg, name)...)
			answered = true
		case dnsmessage.RCodeNameError:
			return nil, true, fmt.Errorf("%s: %w (NXDOMAIN from %s)", strings.TrimSuffix(name.String(), "."), ErrNotFound, server)
		default:
			lastErr = fmt.Errorf("%s answered %s", server, rcodeName(msg.RCode))
		}
	}
	if len(addrs) > 0 {
		return addrs, true, nil
	}
	if answered {
		return nil, true, fmt.Errorf("%s: %w (%s has no A or AAAA records for it)", strings.TrimSuffix(name.String(), "."), ErrNotFound, server)
	}
	return nil, false, lastErr
}

// answerAddrs collects the addresses for name, following CNAMEs.
func answerAddrs(msg *dnsmessage.Message, name dnsmessage.Name) []string {
	names := []string{strings.ToLower(name.String())}
	for grew := true; grew; {
		grew = false
		for _, a := range msg.Answers {
			c, ok := a.Body.(*dnsmessage.CNAMEResource)
			if !ok || !slices.Contains(names, strings.ToLower(a.Header.Name.String())) {
				continue
			}
			if target := strings.ToLower(c.CNAME.String()); !slices.Contains(names, target) {
				names = append(names, target)
				grew = true
			}
		}
	}
	var addrs []string
	for _, a := range msg.Answers {
		if !slices.Contains(names, strings.ToLower(a.Header.Name.String())) {
			continue
		}
		var ip netip.Addr
		switch b := a.Body.(type) {
		case *dnsmessage.AResource:
			ip = netip.AddrFrom4(b.A)
		case *dnsmessage.AAAAResource:
			ip = netip.AddrFrom16(b.AAAA)
		default:
			continue
		}
		if !slices.Contains(addrs, ip.String()) {
			addrs = append(addrs, ip.String())
		}
	}
	return addrs
}

// exchange sends one question over UDP and, if the answer was truncated,
// again over TCP.
func exchange(ctx context.Context, server string, name dnsmessage.Name, qtype dnsmessage.Type) (*dnsmessage.Message, error) {
	id := uint16(rand.Uint32())
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: name, Type: qtype, Class: dnsmessage.ClassINET}},
	}
	packed, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("build query for %s: %w", name, err)
	}
	msg, err := roundTrip(ctx, "udp", server, packed, q)
	if err == nil && msg.Truncated {
		msg, err = roundTrip(ctx, "tcp", server, packed, q)
	}
	return msg, err
}

func roundTrip(ctx context.Context, network, server string, packed []byte, q dnsmessage.Message) (*dnsmessage.Message, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, server)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", server, ctxError(ctx, err))
	}
	defer conn.Close()
	// Unblock reads when ctx ends, whether by deadline or cancel.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()

	msg, err := readAnswer(conn, network, packed, q)
	if err != nil {
		return nil, fmt.Errorf("ask %s over %s: %w", server, network, ctxError(ctx, err))
	}
	return msg, nil
}

func readAnswer(conn net.Conn, network string, packed []byte, q dnsmessage.Message) (*dnsmessage.Message, error) {
	if network == "tcp" {
		// RFC 1035 4.2.2: each message is prefixed by its length.
		framed := binary.BigEndian.AppendUint16(nil, uint16(len(packed)))
		if _, err := conn.Write(append(framed, packed...)); err != nil {
			return nil, err
		}
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return nil, err
		}
		buf := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return nil, err
		}
		var msg dnsmessage.Message
		if err := msg.Unpack(buf); err != nil {
			return nil, fmt.Errorf("unreadable answer: %w", err)
		}
		if !matches(&msg, q) {
			return nil, errors.New("answer does not match the question")
		}
		return &msg, nil
	}

	if _, err := conn.Write(packed); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, err
		}
		var msg dnsmessage.Message
		// Skip stray or spoofed datagrams, as the stub resolver does.
		if msg.Unpack(buf[:n]) != nil || !matches(&msg, q) {
			continue
		}
		return &msg, nil
	}
}

// matches reports whether msg answers q.
func matches(msg *dnsmessage.Message, q dnsmessage.Message) bool {
	if !msg.Response || msg.ID != q.ID || len(msg.Questions) != 1 {
		return false
	}
	got, want := msg.Questions[0], q.Questions[0]
	return got.Type == want.Type && got.Class == want.Class &&
		strings.EqualFold(got.Name.String(), want.Name.String())
}

// ctxError replaces the "i/o timeout" a deadline causes with why it came,
// and shortens socket errors to their cause: the caller names the server.
func ctxError(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return errno
		}
		return err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer in time: %w", context.DeadlineExceeded)
	}
	return ctx.Err()
}

func rcodeName(rc dnsmessage.RCode) string {
	switch rc {
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	}
	return "rcode " + strconv.Itoa(int(rc))
}

// serverErrors joins each server's failure on one line for a status report
// and keeps them all for errors.Is.
type serverErrors []error

func (e serverErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e serverErrors) Unwrap() []error { return e }
