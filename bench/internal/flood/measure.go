package flood

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// Agent is a running vmagent under attack, with a caller that was there
// before the flood: it made a call and holds a log stream open, as fleet
// mode's controller will hold one.
type Agent struct {
	Target
	PID  int
	Root string // the agent's sandbox root
	// Legit is the established caller; Follow ends with the error its
	// long-lived stream ended with (nil while it runs).
	Legit  *agentclient.Client
	follow chan error
}

// Prepare gives the sandbox what an installed VM has for the attacks (a
// proxy log of 4 MiB to follow, Istio's directories to deliver into) and
// opens the legit caller's connection and stream.
func Prepare(ctx context.Context, t Target, pid int, root string) (*Agent, error) {
	logPath := filepath.Join(root, "var/log/istio/istio.log")
	for _, d := range []string{filepath.Dir(logPath), filepath.Join(root, "var/lib/istio/envoy"), filepath.Join(root, "etc/istio/config")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	line := "2026-12-07T00:00:00.000000Z\tinfo\tsds\tSDS: PUSH request for node sidecar~10.0.0.1~vm1.vmns~vmns.svc.cluster.local\n"
	if err := os.WriteFile(logPath, []byte(strings.Repeat(line, (4<<20)/len(line))), 0o644); err != nil {
		return nil, err
	}
	if err := writeJournal(root); err != nil {
		return nil, err
	}
	c, err := agentclient.Dial(t.Addr, t.ClientTLS)
	if err != nil {
		return nil, err
	}
	if err := agentproc.WaitReady(ctx, c); err != nil {
		c.Close()
		return nil, err
	}
	a := &Agent{Target: t, PID: pid, Root: root, Legit: c, follow: make(chan error, 1)}
	got := make(chan struct{}, 1)
	go func() {
		a.follow <- c.SidecarLogs(ctx, &agentv1.SidecarLogsRequest{Source: agentv1.LogSource_LOG_SOURCE_PROXY_LOG, Follow: true, TailLines: 10},
			func([]*agentv1.LogLine) error {
				select {
				case got <- struct{}{}:
				default:
				}
				return nil
			})
	}()
	select {
	case <-got:
	case err := <-a.follow:
		return nil, fmt.Errorf("the legit caller's log stream: %w", err)
	case <-time.After(10 * time.Second):
		return nil, errors.New("the legit caller's log stream sent nothing in 10 s")
	}
	return a, nil
}

// StreamEnded returns how the legit caller's stream ended, or nil while it runs.
func (a *Agent) StreamEnded() error {
	select {
	case err := <-a.follow:
		if err == nil {
			err = errors.New("ended without an error")
		}
		a.follow <- err
		return err
	default:
		return nil
	}
}

// writeJournal gives the sandbox a journal with the sidecar's unit in it,
// so that each journal follower runs a journalctl that stays: a real
// journal file written by systemd-journal-remote from export format
// (systemd.io/JOURNAL_EXPORT_FORMATS). Without that tool the journal row
// measures journalctl failing at once.
func writeJournal(root string) error {
	var remote string
	for _, p := range []string{"/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"} {
		if _, err := os.Stat(p); err == nil {
			remote = p
		}
	}
	if remote == "" {
		return nil
	}
	dir := filepath.Join(root, "var/log/journal/0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var export strings.Builder
	for i := range 100 {
		usec := time.Now().Add(time.Duration(i-100) * time.Second).UnixMicro()
		fmt.Fprintf(&export, "__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=02385adc82c1474790b2904fb62f6dd2\n_SYSTEMD_UNIT=istio.service\nMESSAGE=sidecar line %d\n\n", usec, usec/2, i)
	}
	cmd := exec.Command(remote, "--output="+filepath.Join(dir, "flood.journal"), "-")
	cmd.Stdin = strings.NewReader(export.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("systemd-journal-remote: %w: %s", err, out)
	}
	return nil
}

// Row is one attack's measurement.
type Row struct {
	Attack   Attack
	N        int
	PeakRSS  float64 // MiB, the agent's own (VmHWM) during the attack
	FDs      int     // the agent's descriptors while the attack holds
	Children int     // the agent's child processes while the attack holds
	Outcomes map[string]int
	Alive    bool
	// Established is the legit caller's call during the attack; Fresh a
	// new connection's (retried for up to 15 s, as a client would).
	Established, Fresh error
	FreshAfter         time.Duration
	// Check is the attack's own check (Attack.Check), done while it held.
	Check      error
	CheckAfter time.Duration
}

// Measure runs attack at size n against a, waits until each attempt has
// done its part (for at most settle), and reads the agent while the attack
// holds: memory, descriptors, children, and whether a valid caller is
// still served on its connection and on a new one.
func Measure(ctx context.Context, a *Agent, at Attack, n int, settle time.Duration) (Row, error) {
	r := Row{Attack: at, N: n}
	if err := agentproc.ResetPeakRSS(a.PID); err != nil {
		return r, err
	}
	h, err := at.Start(ctx, a.Target, n)
	if err != nil {
		return r, fmt.Errorf("%s: %w", at.Name, err)
	}
	defer h.Stop()
	for deadline := time.Now().Add(settle); h.Settled() < n && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // and the agent take in what was sent
	r.Alive = syscall.Kill(a.PID, 0) == nil
	if !r.Alive {
		return r, nil
	}
	r.FDs, _ = agentproc.FDs(a.PID)
	kids, _ := agentproc.Children(a.PID)
	r.Children = len(kids)

	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, r.Established = a.Legit.Version(cctx)
	cancel()
	start := time.Now()
	r.Fresh = freshCall(ctx, a.Target)
	r.FreshAfter = time.Since(start)
	if at.Check != nil {
		start = time.Now()
		r.Check = at.Check(ctx, a)
		r.CheckAfter = time.Since(start)
	}

	r.PeakRSS, _ = agentproc.PeakRSSMiB(a.PID)
	r.Outcomes = h.Outcomes()
	return r, nil
}

// freshCall is a new caller's first call, retried while the agent turns it
// away, for up to 15 s.
func freshCall(ctx context.Context, t Target) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := agentclient.Dial(t.Addr, t.ClientTLS)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = c.Version(cctx)
		cancel()
		c.Close()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Deliver is a valid delivery retried while the agent's slots are taken,
// for up to 45 s (a trickle is cancelled after delivery_idle_timeout, 30 s
// by default): the trickle row's check that a real delivery gets in.
func Deliver(ctx context.Context, c *agentclient.Client) error {
	deadline := time.Now().Add(45 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.PutFile(cctx, agentclient.BytesFile("/etc/istio/config/mesh", []byte("defaultConfig: {}\n")))
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// String is the row as the benchmark prints it.
func (r Row) String() string {
	ok := func(err error) string {
		if err != nil {
			return "FAILED: " + err.Error()
		}
		return "served"
	}
	check := ""
	if r.Attack.Check != nil {
		check = fmt.Sprintf(", its check %s (%.1fs)", ok(r.Check), r.CheckAfter.Seconds())
	}
	return fmt.Sprintf("%-58s %-13s %6d  alive=%-5v peak RSS %6.1f MiB  fds %5d  children %3d  established %s, new %s (%.1fs)%s  [%s]",
		r.Attack.Name, r.Attack.Caller, r.N, r.Alive, r.PeakRSS, r.FDs, r.Children, ok(r.Established), ok(r.Fresh), r.FreshAfter.Seconds(), check, String(r.Outcomes))
}
