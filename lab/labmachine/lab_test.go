package labmachine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/machine"
)

// TestLifecycle drives two real lab VMs through the machine contract.
func TestLifecycle(t *testing.T) {
	labtest.RequireVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir := t.TempDir()
	p := New(log, dir, labtest.Cache())
	t.Cleanup(func() {
		for _, n := range []string{"lm1", "lm2"} {
			if err := p.Delete(context.Background(), n); err != nil {
				t.Errorf("delete %s: %v", n, err)
			}
		}
	})

	m1, err := p.Launch(ctx, machine.Spec{Name: "lm1"})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := p.Launch(ctx, machine.Spec{Name: "lm2"})
	if err != nil {
		t.Fatal(err)
	}
	if m1.State != "Running" || m1.Addresses[0] == m2.Addresses[0] {
		t.Fatalf("got %+v and %+v, want two running VMs with their own addresses", m1, m2)
	}
	out, err := p.Exec(ctx, "lm1", nil, "hostname")
	if err != nil || strings.TrimSpace(string(out)) != "lm1" {
		t.Errorf("hostname: got %q, %v", out, err)
	}
	host, _ := p.HostAddress("lm1")
	out, err = p.Exec(ctx, "lm1", nil, "ip", "-4", "route", "show", "default")
	if err != nil || !strings.Contains(string(out), "via "+host) {
		t.Errorf("default route: got %q, %v, want via %s", out, err, host)
	}

	if err := p.Transfer(ctx, "lm1", "/etc/meshvm/agent/server.pem", strings.NewReader("cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = p.Exec(ctx, "lm1", nil, "stat", "-c", "%a %s", "/etc/meshvm/agent/server.pem")
	if err != nil || strings.TrimSpace(string(out)) != "600 4" {
		t.Errorf("transferred file: got %q, %v, want mode 600 and 4 bytes", out, err)
	}

	again, err := p.Launch(ctx, machine.Spec{Name: "lm1"})
	if err != nil || again.Addresses[0] != m1.Addresses[0] {
		t.Errorf("second launch: got %+v, %v, want the same VM", again, err)
	}

	// Stop keeps the disk; the next Launch boots the same machine.
	if err := p.Stop(ctx, "lm1"); err != nil {
		t.Fatal(err)
	}
	if m, _ := p.Info(ctx, "lm1"); m.State != "Stopped" {
		t.Errorf("after stop: got %+v", m)
	}
	if _, err := p.Exec(ctx, "lm1", nil, "true"); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("exec on a stopped VM: got %v", err)
	}
	if _, err := p.Launch(ctx, machine.Spec{Name: "lm1"}); err != nil {
		t.Fatal(err)
	}
	if out, err := p.Exec(ctx, "lm1", nil, "cat", "/etc/meshvm/agent/server.pem"); err != nil || string(out) != "cert" {
		t.Errorf("after restart: got %q, %v, want the file kept", out, err)
	}

	list, err := p.List(ctx)
	if err != nil || len(list) != 2 {
		t.Errorf("list: got %+v, %v", list, err)
	}
	ns2, _ := p.NetNS("lm2")
	if err := p.Delete(ctx, "lm2"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Info(ctx, "lm2"); !errors.Is(err, machine.ErrNotFound) {
		t.Errorf("info after delete: got %v, want not found", err)
	}
	if _, err := os.Stat("/run/netns/" + ns2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns of lm2 left behind: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "lm2*")); len(left) > 0 {
		t.Errorf("lm2's files left behind: %v", left)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), filepath.Join(dir, "lm2")) {
		t.Error("lm2's root is still mounted")
	}
	// The VMs' changes stay in their own layer: the cached tree is untouched.
	rootfs, _ := filepath.Glob(filepath.Join(labtest.Cache(), "rootfs-*"))
	for _, r := range rootfs {
		if _, err := os.Stat(filepath.Join(r, "etc/meshvm")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a VM wrote into the cached root filesystem %s: %v", r, err)
		}
	}
	if _, err := p.Launch(ctx, machine.Spec{Name: "Bad_Name"}); err == nil {
		t.Error("an invalid VM name was accepted")
	}
}

// TestTwoLabsAndReaddress runs a VM of one name in each of two labs at once
// (two instances: their own ranges and namespaces), reaches each lab's
// istiod address from its VM, then moves one VM to a new address: it
// answers there, the old address is gone, and the istiod address still
// answers.
func TestTwoLabsAndReaddress(t *testing.T) {
	labtest.RequireVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var labs [2]*Provider
	for i := range labs {
		home := t.TempDir()
		labs[i] = New(log, filepath.Join(home, "vms"), labtest.Cache())
		p := labs[i]
		t.Cleanup(func() {
			if err := p.Delete(context.Background(), "same"); err != nil {
				t.Errorf("delete: %v", err)
			}
			p.Instance().RemoveIstiodIP()
			instance.Release(home)
		})
	}
	var addrs [2]string
	for i, p := range labs {
		m, err := p.Launch(ctx, machine.Spec{Name: "same"})
		if err != nil {
			t.Fatalf("lab %d: %v", i, err)
		}
		addrs[i] = m.Addresses[0]
	}
	a, b := labs[0].Instance(), labs[1].Instance()
	ns0, _ := labs[0].NetNS("same")
	ns1, _ := labs[1].NetNS("same")
	if a.N == b.N || addrs[0] == addrs[1] || ns0 == ns1 {
		t.Fatalf("two labs share: instances %d and %d, addresses %s and %s, namespaces %s and %s", a.N, b.N, addrs[0], addrs[1], ns0, ns1)
	}
	t.Logf("%s: %s in %s; %s: %s in %s", a, addrs[0], ns0, b, addrs[1], ns1)
	// Each VM's systemd keeps its units in a cgroup of its own.
	for i, ns := range []string{ns0, ns1} {
		leader, _ := labs[i].Leader("same")
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", leader))
		if !strings.Contains(string(cg), "/meshvm-lab/"+ns+"/") {
			t.Errorf("lab %d's VM is not in its own cgroup meshvm-lab/%s:\n%s", i, ns, cg)
		}
	}

	// Each lab's istiod address answers its VM through the VM's default route.
	istiod := serveOn(t, labs[1])
	reach := func(want string) {
		t.Helper()
		host, port, _ := net.SplitHostPort(istiod)
		script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%s && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3", host, port)
		out, err := labs[1].Exec(ctx, "same", nil, "bash", "-c", script)
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("the VM fetching http://%s/: got %q, %v, want %q", istiod, out, err, want)
		}
	}
	reach("istiod stand-in")

	// The VM's own server answers at its address, then at the new one only.
	serve := func() {
		t.Helper()
		if _, err := labs[1].Exec(ctx, "same", nil, "sh", "-c", "mkdir -p /tmp/www && echo vm > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www"); err != nil {
			t.Fatal(err)
		}
	}
	serve()
	get := func(addr string) error {
		c := http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get("http://" + net.JoinHostPort(addr, "8080") + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); strings.TrimSpace(string(b)) != "vm" {
			return fmt.Errorf("got %q, not the VM's page", b)
		}
		return nil
	}
	waitOK := func(addr string) {
		t.Helper()
		var err error
		for i := 0; i < 20; i++ {
			if err = get(addr); err == nil {
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("the VM does not answer at %s: %v", addr, err)
	}
	waitOK(addrs[1])
	moved, err := labs[1].Readdress(ctx, "same")
	if err != nil {
		t.Fatal(err)
	}
	if moved == addrs[1] {
		t.Fatalf("readdress kept %s", moved)
	}
	if m, _ := labs[1].Info(ctx, "same"); !m.Running() || m.Addresses[0] != moved {
		t.Errorf("after readdress: got %+v, want running at %s", m, moved)
	}
	serve()
	waitOK(moved)
	// Gone: from the VM, and the host's end of the old link with it (a
	// TCP answer from the old address proves nothing here: the host's
	// default route may lead to a proxy that accepts anything).
	if out, err := labs[1].Exec(ctx, "same", nil, "ip", "-4", "-o", "addr", "show", "host0"); err != nil ||
		!strings.Contains(string(out), " "+moved+"/30") || strings.Contains(string(out), " "+addrs[1]+"/") {
		t.Errorf("the VM's addresses after readdress: %q, %v, want %s and not %s", out, err, moved, addrs[1])
	}
	if ifs, _ := net.InterfaceAddrs(); strings.Contains(fmt.Sprint(ifs), hostOf(addrs[1])+"/30") {
		t.Errorf("the host still has the old link's end %s: %v", hostOf(addrs[1]), ifs)
	}
	reach("istiod stand-in")
	// The other lab's VM of the same name was not touched.
	if m, _ := labs[0].Info(ctx, "same"); !m.Running() || m.Addresses[0] != addrs[0] {
		t.Errorf("the other lab's VM: got %+v, want running at %s", m, addrs[0])
	}
}

// serveOn puts the lab's istiod address on the host and serves a page on
// it, as the lab's gateway does on 15012; it returns host:port.
func serveOn(t *testing.T, p *Provider) string {
	t.Helper()
	if err := p.Instance().AddIstiodIP(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(p.IstiodAddress(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "istiod stand-in") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// hostOf is the host's end of the /30 whose VM end is vm.
func hostOf(vm string) string {
	ip := net.ParseIP(vm).To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]-1).String()
}
