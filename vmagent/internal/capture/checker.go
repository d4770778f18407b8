package capture

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/fsroot"
)

// Checker gives the verdict on a VM: the rules of its kernel against the
// sidecar environment root wrote, plus the validator's record.
type Checker struct {
	Root *fsroot.Root
	// EnvPath is the sidecar environment `vmagent sidecar prepare` writes
	// (root's, 0600); AgentPort is where vmagent listens (0: unknown).
	EnvPath   string
	AgentPort int
	// Read reads both backends' rules; nil means Read on the root's tools.
	Read func(ctx context.Context) Saves

	mu       sync.Mutex
	inflight *reading
}

// reading is one read of the rules that concurrent verdicts share.
type reading struct {
	done  chan struct{}
	saves Saves
}

// share runs read once for all the verdicts asked meanwhile: GetStatus
// from many callers at once runs one set of iptables-save, not one each
// (each run is bounded by its own timeout, so a waiter is too).
func (c *Checker) share(ctx context.Context, read func(context.Context) Saves) Saves {
	c.mu.Lock()
	if r := c.inflight; r != nil {
		c.mu.Unlock()
		<-r.done
		return r.saves
	}
	r := &reading{done: make(chan struct{})}
	c.inflight = r
	c.mu.Unlock()
	// Not the first caller's cancellation: the others wait on this read.
	r.saves = read(context.WithoutCancel(ctx))
	c.mu.Lock()
	c.inflight = nil
	c.mu.Unlock()
	close(r.done)
	return r.saves
}

// maxEnv bounds the sidecar environment's read.
const maxEnv = 1 << 20

// Verdict judges the rules in force. sidecarState is systemd's ActiveState
// of the istio unit, empty when it could not be read.
func (c *Checker) Verdict(ctx context.Context, sidecarState string) Verdict {
	var active bool
	switch sidecarState {
	case "active":
		active = true
	case "inactive", "failed":
	case "":
		return skipped("the sidecar's state is unknown (no systemd?): the capture rules were not judged")
	default:
		// activating, deactivating, reloading: rules are being installed or removed.
		return skipped("the sidecar is " + sidecarState + ": the capture rules are changing; ask again once it settles")
	}
	env := map[string]string{}
	data, err := c.Root.ReadTrusted(c.EnvPath, maxEnv)
	switch {
	case errors.Is(err, fs.ErrNotExist) && active:
		return skipped("no sidecar environment at " + c.EnvPath + ": the running sidecar was not started through `vmagent sidecar prepare`; restart it")
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return skipped("read the sidecar environment: " + err.Error())
	default:
		if err := envfile.Parse(c.EnvPath, data, env); err != nil {
			return skipped("read the sidecar environment: " + err.Error())
		}
	}
	read := c.Read
	if read == nil {
		read = func(ctx context.Context) Saves {
			var dirs []string
			for _, d := range DefaultDirs {
				dirs = append(dirs, c.Root.HostPath(d))
			}
			return Read(ctx, dirs)
		}
	}
	e := Expect{Active: active, Env: env, AgentPort: c.AgentPort, Nameservers: c.nameservers()}
	e.Addr, e.Iface = addrOf(env["INSTANCE_IP"])
	v := Judge(c.share(ctx, read), e)
	rec, ok, err := Load(c.Root)
	if err != nil {
		v.Checks = append(v.Checks, Check{Name: "istio validation", State: Skipped, Detail: err.Error()})
		return v
	}
	v.WithValidation(rec, ok, active)
	return v
}

func skipped(why string) Verdict {
	return Verdict{State: Skipped, Checks: []Check{{Name: "capture", State: Skipped, Detail: why}}}
}

// addrOf returns the address and the interface holding it; the interface
// only matters to rules naming one (-i/-o), which meshvm's do not.
func addrOf(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, ""
	}
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
					return a, ifc.Name
				}
			}
		}
	}
	return a, ""
}

// nameservers reads /etc/resolv.conf as istio-iptables does, bounded; a
// link to systemd-resolved's stub is followed (root's files).
func (c *Checker) nameservers() []netip.Addr {
	f, err := os.Open(c.Root.HostPath("/etc/resolv.conf"))
	if err != nil {
		return nil
	}
	defer f.Close()
	data, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
