// linkbench measures sidecar delivery over a real, shaped link against
// OpenSSH's scp, side by side in one run:
//
//   - a network namespace and a veth pair, the host's end shaped by tc tbf
//     at 100 Mbit and 1 Gbit, then unshaped;
//   - in the namespace, sshd (Debian's openssh-server) and the real
//     vmagent over mTLS, writing into one sandbox;
//   - the payload: the lab's pilot-agent and pilot-discovery (as
//     /usr/local/bin/pilot-agent and envoy), and a random file as the
//     incompressible case.
//
// Per link it prints, median of 3: scp, scp -C, vmagent as it was (plain
// chunks), vmagent with the compressed form cached (as every VM after the
// first gets it) and with it compressed on the spot (the first), and the
// ratios against the goals: >= 3x scp at 100 Mbit, >= 2x at 1 Gbit and
// unshaped, no slower than before, incompressible within 5 %.
//
// Root only. Run it with `make bench-link`.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	"github.com/meshvm/meshvm/bench/internal/measure"
	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/formcache"
)

const (
	netns  = "meshvm-linkbench"
	hostIf = "mvlb0" // the host's end, where tbf shapes what is sent
	nsIf   = "mvlb1"
	rounds = 3
	// The incompressible case's size.
	randomSize = 64 << 20
)

var (
	hostIP = net.IPv4(10, 253, 77, 1)
	nsIP   = net.IPv4(10, 253, 77, 2)
)

// link is one shaping of the host's end; an empty rate leaves it unshaped.
type link struct{ name, rate, burst string }

var links = []link{
	{"100 Mbit", "100mbit", "64kb"},
	{"1 Gbit", "1gbit", "512kb"},
	{"unshaped", "", ""},
}

// payload is a file to deliver: where it is here and where it goes.
type payload struct{ local, path string }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "linkbench:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("it makes a network namespace and shapes a link: run it as root (sudo make bench-link)")
	}
	for _, tool := range []string{"ip", "tc", "ssh-keygen", "scp", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: apt-get install -y openssh-server openssh-client iproute2", tool)
		}
	}
	ctx := context.Background()
	bins, err := build.Cached(ctx, build.Options{ModuleDir: "lab/toolchain", CacheDir: build.DefaultCacheDir()})
	if err != nil {
		return fmt.Errorf("the payload is the lab's pilot-agent and pilot-discovery: %w", err)
	}
	binaries := []payload{
		{bins.Path("pilot-agent"), "/usr/local/bin/pilot-agent"},
		{bins.Path("pilot-discovery"), "/usr/local/bin/envoy"},
	}

	work, err := os.MkdirTemp("", "linkbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	random := []payload{{filepath.Join(work, "random"), "/usr/local/bin/envoy"}}
	if err := measure.RandomFile(random[0].local, randomSize); err != nil {
		return err
	}

	if err := makeLink(); err != nil {
		return err
	}
	defer removeLink()
	stopSSHD, err := startSSHD(work)
	if err != nil {
		return err
	}
	defer stopSSHD()

	bin, err := agentproc.Build(work)
	if err != nil {
		return err
	}
	fleet, err := agentproc.NewFleetIn(bin, work, netns, nsIP)
	if err != nil {
		return err
	}
	defer fleet.Stop()
	agent, err := fleet.Start()
	if err != nil {
		return err
	}
	b := &bench{work: work, fleet: fleet, agent: agent, root: fleet.RootOf(0)}
	// Reached once before timing: the agent is up.
	if _, err := b.deliver(binaries[:0], nil); err != nil {
		return err
	}
	warm := formcache.New(filepath.Join(work, "zstd"))
	for _, p := range append(slices.Clone(binaries), random...) {
		if _, err := warm.Get(p.local); err != nil {
			return err
		}
	}

	fmt.Printf("payload: pilot-agent + pilot-discovery, %.0f MB; random %d MB; median of %d; scp and vmagent write into one sandbox in the namespace\n",
		float64(sizeOf(binaries))/1e6, randomSize>>20, rounds)
	for _, l := range links {
		if err := shape(l); err != nil {
			return err
		}
		if err := b.measure(l, binaries, random, warm); err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
	}
	peak, err := agentproc.PeakRSSMiB(agent.Cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("\nagent peak RSS (VmHWM) over every delivery above: %.1f MiB (the unit's MemoryMax is 256M)\n", peak)
	return nil
}

type bench struct {
	work  string
	fleet *agentproc.Fleet
	agent *agentproc.Agent
	root  string
}

// measure prints one link's figures.
func (b *bench) measure(l link, binaries, random []payload, warm *formcache.Cache) error {
	var scp, scpC, before, now, cold, rscp, rbefore, rnow time.Duration
	cases := []struct {
		into *time.Duration
		run  func() (time.Duration, error)
	}{
		{&scp, func() (time.Duration, error) { return b.scp(binaries, false) }},
		{&scpC, func() (time.Duration, error) { return b.scp(binaries, true) }},
		{&before, func() (time.Duration, error) { return b.deliver(binaries, nil) }},
		{&now, func() (time.Duration, error) { return b.deliver(binaries, warm) }},
		{&cold, func() (time.Duration, error) {
			dir := filepath.Join(b.work, "zstd-cold")
			defer os.RemoveAll(dir)
			return b.deliver(binaries, formcache.New(dir))
		}},
		{&rscp, func() (time.Duration, error) { return b.scp(random, false) }},
		{&rbefore, func() (time.Duration, error) { return b.deliver(random, nil) }},
		{&rnow, func() (time.Duration, error) { return b.deliver(random, warm) }},
	}
	for _, c := range cases {
		var ds []time.Duration
		for range rounds {
			d, err := c.run()
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		*c.into = measure.Median(ds)
	}
	goal := map[string]float64{"100 Mbit": 3, "1 Gbit": 2, "unshaped": 2}[l.name]
	fmt.Printf("\n%s\n", l.name)
	fmt.Printf("  binaries:       scp %6.2f s   scp -C %6.2f s   vmagent before %6.2f s   vmagent %6.2f s   (compressing too, first VM: %.2f s)\n",
		scp.Seconds(), scpC.Seconds(), before.Seconds(), now.Seconds(), cold.Seconds())
	fmt.Printf("  vmagent vs scp: %.2fx (goal >= %.0fx), vs scp -C %.2fx, vs before %.2fx (goal >= 1); first VM vs scp %.2fx\n",
		scp.Seconds()/now.Seconds(), goal, scpC.Seconds()/now.Seconds(), before.Seconds()/now.Seconds(), scp.Seconds()/cold.Seconds())
	fmt.Printf("  incompressible: scp %6.2f s   vmagent before %6.2f s   vmagent %6.2f s   (%+.1f %% vs before, goal within 5 %%)\n",
		rscp.Seconds(), rbefore.Seconds(), rnow.Seconds(), 100*(rnow.Seconds()/rbefore.Seconds()-1))
	return nil
}

// deliver sends files to the agent over a new connection, as a new
// hostctl would: plainly (as before compression) when forms is nil, else
// through the compressed cache. The agent's copies are removed first, so
// every file is sent.
func (b *bench) deliver(files []payload, forms *formcache.Cache) (time.Duration, error) {
	for _, f := range files {
		if err := os.Remove(filepath.Join(b.root, f.path)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
	}
	c, err := b.fleet.Dial(b.agent)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ctx := context.Background()
	if err := agentproc.WaitReady(ctx, c); err != nil {
		return 0, err
	}
	start := time.Now()
	for _, f := range files {
		file := agentclient.LocalFile(f.path, f.local)
		if forms != nil {
			if file, err = forms.File(f.path, f.local); err != nil {
				return 0, err
			}
		}
		res, err := c.PutFile(ctx, file)
		if err != nil {
			return 0, fmt.Errorf("deliver %s: %w", f.local, err)
		}
		if !res.Sent {
			return 0, fmt.Errorf("deliver %s: the agent skipped it", f.local)
		}
	}
	return time.Since(start), nil
}

// scp copies files into the namespace's sshd, into the sandbox beside the
// agent's files, compressed (-C) or not.
func (b *bench) scp(files []payload, compress bool) (time.Duration, error) {
	dst := filepath.Join(b.work, "scp")
	os.RemoveAll(dst)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, err
	}
	args := []string{"-q", "-i", filepath.Join(b.work, "id"), "-P", "2222", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	if compress {
		args = append(args, "-C")
	}
	for _, f := range files {
		args = append(args, f.local)
	}
	args = append(args, "root@"+nsIP.String()+":"+dst+"/")
	start := time.Now()
	if out, err := exec.Command("scp", args...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("scp: %w: %s", err, out)
	}
	return time.Since(start), nil
}

// makeLink creates the namespace and the veth pair between it and the host
// (a leftover of an interrupted run is removed first).
func makeLink() error {
	removeLink()
	steps := [][]string{
		{"netns", "add", netns},
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", netns},
		{"addr", "add", hostIP.String() + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", netns, "addr", "add", nsIP.String() + "/30", "dev", nsIf},
		{"-n", netns, "link", "set", nsIf, "up"},
		{"-n", netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

func removeLink() {
	exec.Command("ip", "link", "del", hostIf).Run()
	exec.Command("ip", "netns", "del", netns).Run()
}

// shape puts a token bucket on what the host sends (the payload's way);
// an unshaped link has none.
func shape(l link) error {
	exec.Command("tc", "qdisc", "del", "dev", hostIf, "root").Run()
	if l.rate == "" {
		return nil
	}
	args := []string{"qdisc", "add", "dev", hostIf, "root", "tbf", "rate", l.rate, "burst", l.burst, "latency", "50ms"}
	if out, err := exec.Command("tc", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("tc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// startSSHD runs sshd in the namespace on port 2222 with its own host key,
// trusting one key made here for root.
func startSSHD(work string) (stop func(), err error) {
	for _, k := range []string{"host", "id"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(work, k)).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(work, "id.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`Port 2222
ListenAddress %s
HostKey %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile %s
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
`, nsIP, filepath.Join(work, "host"), filepath.Join(work, "authorized_keys"), filepath.Join(work, "sshd.pid"))
	cfgPath := filepath.Join(work, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	// sshd's privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", "netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
	var logs strings.Builder // the readiness probe's connection makes sshd complain
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(nsIP.String(), "2222"), time.Second)
		if err == nil {
			c.Close()
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("sshd not listening in %s after 10s: %w: %s", netns, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sizeOf(files []payload) int64 {
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f.local); err == nil {
			n += st.Size()
		}
	}
	return n
}
