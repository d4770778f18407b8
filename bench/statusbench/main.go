// statusbench measures `hostctl vm status`'s fan-out over many agents: 100
// real vmagent processes on loopback, each asked what vm status asks (dial
// with mTLS, status, DNS, app probe) through agentclient.Overview, all at
// once as vm status does, and one after another as the baseline, same run.
// Goal: 100 agents in <= 1 s. Run it with `make bench-status`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

func main() {
	n := flag.Int("agents", 100, "how many agents")
	rounds := flag.Int("rounds", 5, "measured rounds (the median is printed)")
	flag.Parse()
	if err := run(*n, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "statusbench:", err)
		os.Exit(1)
	}
}

func run(n, rounds int) error {
	fleet, err := agentproc.BuildFleet("statusbench")
	if err != nil {
		return err
	}
	defer fleet.Close()
	ctx := context.Background()
	var agents []*agentproc.Agent
	for range n {
		a, err := fleet.Start()
		if err != nil {
			return err
		}
		agents = append(agents, a)
	}
	for _, a := range agents {
		c, err := fleet.Dial(a)
		if err != nil {
			return err
		}
		err = agentproc.WaitReady(ctx, c)
		c.Close()
		if err != nil {
			return err
		}
	}
	fmt.Printf("%d vmagent processes ready on loopback\n", n)

	// One VM's status, as vm status gathers it: a new connection each time.
	status := func(a *agentproc.Agent) error {
		c, err := fleet.Dial(a)
		if err != nil {
			return err
		}
		defer c.Close()
		ov := c.Overview(ctx, "localhost", &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_TCP, Port: 1})
		return ov.StatusErr
	}
	concurrent := func() (time.Duration, error) {
		start := time.Now()
		errs := make([]error, len(agents))
		var wg sync.WaitGroup
		for i, a := range agents {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = status(a) }()
		}
		wg.Wait()
		d := time.Since(start)
		for _, err := range errs {
			if err != nil {
				return d, err
			}
		}
		return d, nil
	}
	sequential := func() (time.Duration, error) {
		start := time.Now()
		for _, a := range agents {
			if err := status(a); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	var par, seq []time.Duration
	for range rounds {
		d, err := concurrent()
		if err != nil {
			return err
		}
		par = append(par, d)
		if d, err = sequential(); err != nil {
			return err
		}
		seq = append(seq, d)
	}
	p, s := median(par), median(seq)
	fmt.Printf("fan-out (vm status):   %6.0f ms for %d agents (median of %d)   goal <= 1000 ms\n", ms(p), n, rounds)
	fmt.Printf("one after another:     %6.0f ms (baseline)\n", ms(s))
	fmt.Printf("speed-up:              %6.1fx\n", s.Seconds()/p.Seconds())
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
