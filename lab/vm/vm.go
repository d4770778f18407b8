// Package vm runs lab "VMs" on one Linux machine: a network namespace
// joined to the host by a veth pair, booting a real Debian with systemd as
// PID 1 under systemd-nspawn. Users, files, /etc/hosts and units created
// inside never touch the host. The root filesystem is made once with
// debootstrap and cached; each VM boots an overlay of it holding only its
// own changes.
package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meshvm/meshvm/pkg/host/filelock"
)

// Suite and Packages define the cached root filesystem.
const (
	Suite  = "bookworm"
	Mirror = "http://deb.debian.org/debian"
)

// Packages are what a lab VM needs beyond minbase: systemd as init, D-Bus,
// the tools the sidecar and vmagent drive.
// busybox serves the lab VM's app (httpd), where the recipe uses python3.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "iptables", "iproute2", "passwd", "libpam-systemd", "busybox"}

// Rootfs returns a cached Debian root filesystem under cacheDir, making it
// with debootstrap the first time (a few minutes; progress goes to log).
func Rootfs(ctx context.Context, log *slog.Logger, cacheDir string) (string, error) {
	return RootfsWith(ctx, log, cacheDir)
}

// RootfsWith is Rootfs with extra packages beyond Packages, cached apart
// (the package list is part of the cache key).
func RootfsWith(ctx context.Context, log *slog.Logger, cacheDir string, extra ...string) (string, error) {
	packages := append(slices.Clip(Packages), extra...)
	key := sha256.Sum256([]byte(Suite + " " + Mirror + " " + strings.Join(packages, ",") + " " + runtime.GOARCH))
	dir := filepath.Join(cacheDir, "rootfs-"+Suite+"-"+hex.EncodeToString(key[:6]))
	if _, err := os.Stat(filepath.Join(dir, ".meshvm-complete")); err == nil {
		return dir, nil
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", fmt.Errorf("debootstrap not found: apt-get install debootstrap")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	// Labs come up side by side: one makes the tree, the others wait and
	// find it (a second debootstrap would remove the first's partial tree,
	// and its rename the tree running VMs are overlays of).
	unlock, err := filelock.Hold(filelock.Beside(dir), 0o644, func() {
		log.Info("another process is making the lab VM root filesystem: waiting for it", "dir", dir)
	})
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, ".meshvm-complete")); err == nil {
		return dir, nil
	}
	tmp := dir + ".partial"
	os.RemoveAll(tmp)
	log.Info("building the lab VM root filesystem with debootstrap (cached afterwards)", "suite", Suite, "dir", dir)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(packages, ","), Suite, tmp, Mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("debootstrap %s: %w: %s", Suite, err, lastLines(out, 5))
	}
	// debootstrap's /etc/hosts lacks localhost, which probes to localhost need.
	if err := os.WriteFile(filepath.Join(tmp, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".meshvm-complete"), nil, 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	log.Info("lab VM root filesystem ready", "took", time.Since(start).Round(time.Second))
	return dir, nil
}

// Spec describes one lab VM.
type Spec struct {
	// Name is short (it names the netns and the veth): [a-z0-9-], <= 10 chars.
	Name string
	// Rootfs is the cached tree; Dir is the VM's root, an overlay of it.
	Rootfs, Dir string
	// HostIP and VMIP are the two ends of the veth pair, in one /30.
	HostIP, VMIP net.IP
	// Tag marks the network namespace's and host interface's names with
	// the lab instance ("" for instance 0), so two labs' VMs of one name
	// do not meet. At most 2 characters (an interface name is short).
	Tag string
	// Setup, if set, runs on the mounted root before each boot (a
	// cloud-init seed, say).
	Setup func(root string) error
}

// VM is a running lab VM. It outlives the process that launched it (the lab
// stays up between hostctl runs): Open finds it again from its PID file.
type VM struct {
	Spec
	log    *slog.Logger
	nspawn int // systemd-nspawn's PID
	leader int // the VM's systemd, nspawn's child
}

func pidFile(dir string) string { return dir + ".pid" }

// upperDir and workDir hold the VM's overlay layers beside its root.
func upperDir(dir string) string { return dir + ".upper" }
func workDir(dir string) string  { return dir + ".work" }

// Open returns the VM in s.Dir if it is running. While its systemd-nspawn
// runs but the container's init is not up yet (a launch cut off mid-boot),
// it returns the VM with ok false: there must not be a second nspawn.
func Open(log *slog.Logger, s Spec) (vm *VM, ok bool) {
	pid := nspawnOf(s.Dir)
	if pid == 0 {
		return nil, false
	}
	vm = &VM{Spec: s, log: log.With("vm", s.Name), nspawn: pid, leader: childOf(pid)}
	return vm, vm.leader != 0
}

// starting is what the PID file holds from just before nspawn starts until
// its PID is known.
const starting = "starting"

// nspawnOf is the PID of the systemd-nspawn booting dir: the one in the PID
// file, else, when a launch was killed between starting nspawn and writing
// its PID, one found by its command line; else 0 (no PID file: stopped).
func nspawnOf(dir string) int {
	data, err := os.ReadFile(pidFile(dir))
	if err != nil {
		return 0
	}
	if rec := strings.TrimSpace(string(data)); rec != starting {
		if pid, err := strconv.Atoi(rec); err == nil && nspawnFor(pid, dir) {
			return pid
		}
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && nspawnFor(pid, dir) {
			os.WriteFile(pidFile(dir), []byte(strconv.Itoa(pid)+"\n"), 0o600)
			return pid
		}
	}
	return 0
}

// nspawnFor reports whether pid is a systemd-nspawn with -D dir.
func nspawnFor(pid int, dir string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "systemd-nspawn" {
		return false
	}
	for i := 1; i+1 < len(args); i++ {
		if args[i] == "-D" && args[i+1] == dir {
			return true
		}
	}
	return false
}

// Launch mounts the root filesystem, creates the network and boots systemd,
// or returns the VM already running there. It returns once systemd inside
// reports the system running (or degraded).
func Launch(ctx context.Context, log *slog.Logger, s Spec) (*VM, error) {
	if vm, ok := Open(log, s); ok {
		return vm, nil
	} else if vm != nil {
		if err := vm.waitRunning(ctx); err != nil {
			return nil, err
		}
		return vm, nil
	}
	if err := os.MkdirAll(filepath.Dir(s.Dir), 0o755); err != nil {
		return nil, err
	}
	if err := mountRoot(ctx, log, s); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "etc/hostname"), []byte(s.Name+"\n"), 0o644); err != nil {
		return nil, err
	}
	if s.Setup != nil {
		if err := s.Setup(s.Dir); err != nil {
			return nil, fmt.Errorf("set up lab VM %s: %w", s.Name, err)
		}
	}
	if err := raiseInotifyInstances(log); err != nil {
		return nil, err
	}
	if err := network(s); err != nil {
		return nil, fmt.Errorf("lab network for %s: %w", s.Name, err)
	}
	logf, err := os.OpenFile(s.Dir+".console.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	groups, err := cgroups(s)
	if err != nil {
		return nil, fmt.Errorf("cgroup for lab VM %s: %w", s.Name, err)
	}
	// nspawn --keep-unit puts the container in "payload" beside its own
	// cgroup: started from one cgroup, every VM would share one, and a
	// VM's systemd would act on the others' units. The shell moves itself
	// into the VM's own cgroups, then becomes nspawn.
	cmd := exec.Command("sh", "-c", `IFS=:; for d in $MESHVM_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 1; done; unset MESHVM_CGROUPS; exec "$@"`, "sh",
		"systemd-nspawn", "--quiet", "-D", s.Dir, "--boot", "--register=no", "--keep-unit",
		"--console=pipe", "--machine="+s.Name, "--network-namespace-path=/run/netns/"+NetNS(s),
		// The namespace is the VM's own, so its root may manage it: the
		// sidecar's capture rules need this (nspawn grants it only with
		// --private-network, not for a namespace given by path).
		"--capability=CAP_NET_ADMIN")
	cmd.Env = append(os.Environ(), "MESHVM_CGROUPS="+strings.Join(groups, ":"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: the VM keeps running after hostctl exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := os.WriteFile(pidFile(s.Dir), []byte(starting+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.Remove(pidFile(s.Dir))
		return nil, fmt.Errorf("systemd-nspawn: %w", err)
	}
	go cmd.Wait() // reap it if it ends while this process lives
	vm := &VM{Spec: s, log: log.With("vm", s.Name), nspawn: cmd.Process.Pid}
	// The shell execs nspawn at once; until then the PID is not nspawn's.
	for i := 0; i < 100 && !nspawnFor(vm.nspawn, s.Dir) && alive(vm.nspawn); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(pidFile(s.Dir), []byte(strconv.Itoa(vm.nspawn)+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := vm.waitRunning(ctx); err != nil {
		vm.Stop(context.Background())
		return nil, err
	}
	return vm, nil
}

// waitRunning waits for the container's init and for systemd to finish booting.
func (vm *VM) waitRunning(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if !nspawnFor(vm.nspawn, vm.Dir) {
			return fmt.Errorf("systemd-nspawn exited during boot: see %s.console.log", vm.Dir)
		}
		// Asked again each time: while nspawn sets the container up, its
		// child is a helper that exits (a stale PID would never boot).
		if vm.leader = childOf(vm.nspawn); vm.leader == 0 {
			continue
		}
		out, _ := vm.Exec(ctx, "systemctl", "is-system-running")
		switch strings.TrimSpace(string(out)) {
		case "running", "degraded":
			return nil
		}
	}
	return fmt.Errorf("%s did not finish booting in 90s: see %s.console.log", vm.Name, vm.Dir)
}

// childOf returns nspawn's container init: its child that is not nspawn
// itself (the helper that sets the container up is a fork of nspawn), or 0.
func childOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(data)) {
		n, _ := strconv.Atoi(f)
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n)); err == nil && strings.TrimSpace(string(comm)) != "systemd-nspawn" {
			return n
		}
	}
	return 0
}

// Exec runs a command inside the VM (all its namespaces) and returns its
// combined output.
func (vm *VM) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return vm.ExecInput(ctx, nil, name, args...)
}

// ExecInput is Exec with stdin.
func (vm *VM) ExecInput(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd, err := vm.Command(ctx, name, args...)
	if err != nil {
		return nil, err
	}
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %s %s: %w: %s", vm.Name, name, strings.Join(args, " "), err, lastLines(out, 3))
	}
	return out, nil
}

// Command returns the command that runs name inside the VM (all its
// namespaces), for a caller that wires its streams and reads its exit code.
func (vm *VM) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	if vm.leader == 0 {
		return nil, fmt.Errorf("%s is not running", vm.Name)
	}
	full := append([]string{"-t", strconv.Itoa(vm.leader), "-a", "--", name}, args...)
	return exec.CommandContext(ctx, "nsenter", full...), nil
}

// Leader is the PID of the VM's systemd on the host.
func (vm *VM) Leader() int { return vm.leader }

// Stop powers the VM off, waits for it, and removes its network.
func (vm *VM) Stop(ctx context.Context) error {
	if vm.leader == 0 && vm.nspawn != 0 {
		vm.leader = childOf(vm.nspawn)
	}
	grace := 30 * time.Second
	if vm.leader != 0 {
		vm.Exec(ctx, "systemctl", "poweroff", "--no-block")
	} else {
		grace = 0 // nspawn is still setting up: nothing inside to power off
	}
	deadline := time.Now().Add(grace)
	for nspawnFor(vm.nspawn, vm.Dir) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if nspawnFor(vm.nspawn, vm.Dir) {
		syscall.Kill(vm.nspawn, syscall.SIGKILL)
		for i := 0; nspawnFor(vm.nspawn, vm.Dir) && i < 50; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	vm.leader = 0
	os.Remove(pidFile(vm.Dir))
	removeCgroups(vm.Spec)
	return removeNetwork(vm.Spec)
}

// Remove stops the VM if needed and deletes its root filesystem and changes.
func (vm *VM) Remove(ctx context.Context) error {
	stopErr := vm.Stop(ctx)
	if err := unmountRoot(vm.Dir); err != nil {
		// Never delete through a mount that is still up.
		return errors.Join(stopErr, fmt.Errorf("unmount %s: %w", vm.Dir, err))
	}
	return errors.Join(stopErr, os.RemoveAll(vm.Dir), os.RemoveAll(upperDir(vm.Dir)), os.RemoveAll(workDir(vm.Dir)),
		os.RemoveAll(vm.Dir+".console.log"))
}

// cgroupRoots are where the hierarchies systemd (the host's and the VM's)
// keeps its units in are mounted: the named v1 one and cgroup2 of a hybrid
// host, or cgroup2 alone (a hybrid host's /sys/fs/cgroup is a tmpfs).
var cgroupRoots = []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"}

// cgroups makes the VM's own cgroup in each hierarchy there is, named like
// its namespace (unique on the machine), and returns them.
func cgroups(s Spec) ([]string, error) {
	var out []string
	for _, root := range cgroupRoots {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(root, "meshvm-lab", NetNS(s))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// removeCgroups removes the VM's cgroups once empty, deepest first.
func removeCgroups(s Spec) {
	for _, root := range cgroupRoots {
		top := filepath.Join(root, "meshvm-lab", NetNS(s))
		var dirs []string
		filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

// alive reports whether pid is alive.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// NetNS is the name of the VM's network namespace (under /run/netns).
func NetNS(s Spec) string    { return "meshvm" + s.Tag + "-" + s.Name }
func hostVeth(s Spec) string { return "mv" + s.Tag + "-" + s.Name }

// network creates the namespace, the veth pair and the addresses.
func network(s Spec) error {
	removeNetwork(s)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(NetNS(s))
	if err != nil {
		return fmt.Errorf("create netns: %w", err)
	}
	defer ns.Close()
	if err := netns.Set(orig); err != nil {
		return err
	}
	// The peer is born inside the namespace: VMs launched at once would
	// otherwise race for the name host0 in the host's namespace.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth(s)}, PeerName: "host0", PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	host, err := netlink.LinkByName(hostVeth(s))
	if err != nil {
		return err
	}
	mask := net.CIDRMask(30, 32)
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: s.HostIP, Mask: mask}}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	// VMs reach each other through the host, as VMs on one network do (the
	// proxyless VMs' mesh calls): forwarding on this link only, the host's
	// own setting (often off) left as it is.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+hostVeth(s)+"/forwarding", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("forwarding on %s: %w", hostVeth(s), err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	inner, err := h.LinkByName("host0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(inner, &netlink.Addr{IPNet: &net.IPNet{IP: s.VMIP, Mask: mask}}); err != nil {
		return err
	}
	if err := h.LinkSetUp(inner); err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: inner.Attrs().Index, Gw: s.HostIP})
}

func removeNetwork(s Spec) error {
	if l, err := netlink.LinkByName(hostVeth(s)); err == nil {
		netlink.LinkDel(l)
	}
	if err := netns.DeleteNamed(NetNS(s)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", NetNS(s), err)
	}
	return nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// minInotifyInstances lets about 200 lab VMs boot: each VM's systemd,
// journald and logind hold inotify instances, and the kernel's default of
// 128 per user stops the 25th VM's systemd at boot.
const minInotifyInstances = 1024

// raiseInotifyInstances raises the host's per-user inotify instance limit
// to minInotifyInstances when it is lower.
func raiseInotifyInstances(log *slog.Logger) error {
	const path = "/proc/sys/fs/inotify/max_user_instances"
	data, err := os.ReadFile(path)
	if err != nil {
		return nil // not Linux procfs: nothing to raise
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || n >= minInotifyInstances {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(minInotifyInstances)), 0o644); err != nil {
		return fmt.Errorf("fs.inotify.max_user_instances is %d, too few for many lab VMs, and raising it failed (%w): run sysctl -w fs.inotify.max_user_instances=%d", n, err, minInotifyInstances)
	}
	log.Info("raised fs.inotify.max_user_instances for the lab VMs' systemd", "from", n, "to", minInotifyInstances)
	return nil
}
