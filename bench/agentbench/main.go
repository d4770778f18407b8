// agentbench measures vmagent against its goals and prints the figures:
//
//   - delivery of a 150 MB file over the mTLS channel on loopback vs a plain
//     local copy of the same file, same run (goal: ratio >= 0.9);
//   - agent RSS when idle after start and after the delivery (goal <= 15 MiB idle);
//   - the static binary's size (goal <= 25 MiB);
//   - the agent's peak RSS and the wall time with 200 concurrent 8 MB
//     deliveries, and with 200 that stall after their first chunk.
//
// It builds the real vmagent, runs it against a sandbox root and talks to it
// through pkg/host/agentclient, as hostctl does. Run it with `make bench`.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	"github.com/meshvm/meshvm/bench/internal/measure"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

const (
	fileSize = 150 << 20
	rounds   = 5
	mib      = 1 << 20
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agentbench:", err)
		os.Exit(1)
	}
}

func run() error {
	fleet, err := agentproc.BuildFleet("agentbench")
	if err != nil {
		return err
	}
	defer fleet.Close()
	work := fleet.Dir()
	st, err := os.Stat(fleet.Bin())
	if err != nil {
		return err
	}
	fmt.Printf("binary size:        %6.1f MiB   (goal <= 25 MiB)\n", float64(st.Size())/mib)

	agent, err := fleet.Start()
	if err != nil {
		return err
	}
	c, err := fleet.Dial(agent)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()
	if err := agentproc.WaitReady(ctx, c); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // let start-up garbage be collected
	idle, err := agentproc.RSSMiB(agent.Cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("agent RSS idle:     %6.1f MiB   (goal <= 15 MiB)\n", idle)

	var copies, delivers, hashes []time.Duration
	for i := range rounds {
		src := filepath.Join(work, fmt.Sprintf("payload-%d", i))
		if err := measure.RandomFile(src, fileSize); err != nil {
			return err
		}
		d, err := localCopy(src, filepath.Join(work, "copy"))
		if err != nil {
			return err
		}
		copies = append(copies, d)
		// As hostctl does, the digest comes from the cache it keeps binaries in;
		// the client-side hash is timed separately.
		start := time.Now()
		f := agentclient.LocalFile("/usr/local/bin/envoy", src)
		if f.SHA256, f.Size, err = hashFile(src); err != nil {
			return err
		}
		hashes = append(hashes, time.Since(start))
		start = time.Now()
		res, err := c.PutFile(ctx, f)
		if err != nil {
			return fmt.Errorf("deliver: %w", err)
		}
		if !res.Sent {
			return fmt.Errorf("round %d: the agent skipped a new file", i)
		}
		delivers = append(delivers, time.Since(start))
		os.Remove(src)
	}
	after, err := agentproc.RSSMiB(agent.Cmd.Process.Pid)
	if err != nil {
		return err
	}
	// The agent hands freed memory back 1 s after its last call.
	time.Sleep(2 * time.Second)
	settled, err := agentproc.RSSMiB(agent.Cmd.Process.Pid)
	if err != nil {
		return err
	}
	// Rounds interleave copy and delivery so disk write-back noise hits
	// both; medians keep one slow fsync from deciding the ratio.
	cp, dl, hs := measure.Median(copies), measure.Median(delivers), measure.Median(hashes)
	mbps := func(d time.Duration) float64 { return float64(fileSize) / mib / d.Seconds() }
	fmt.Printf("local copy 150 MB:  %6.0f ms  %6.0f MiB/s (median of %d: read, write, fsync)\n", ms(cp), mbps(cp), rounds)
	fmt.Printf("mTLS delivery:      %6.0f ms  %6.0f MiB/s (median of %d: stat, stream, hash+verify, fsync, rename on the agent)\n", ms(dl), mbps(dl), rounds)
	fmt.Printf("client-side sha256: %6.0f ms  (hostctl's binary cache already knows it)\n", ms(hs))
	fmt.Printf("delivery/copy throughput ratio: %.2f   (goal >= 0.9)\n", cp.Seconds()/dl.Seconds())
	fmt.Printf("with client-side hash:          %.2f\n", cp.Seconds()/(dl+hs).Seconds())
	fmt.Printf("agent RSS right after delivery: %6.1f MiB; 2 s later: %.1f MiB (goal <= 15 MiB)\n", after, settled)

	// Many callers at once: the unit's MemoryMax is 256M, GOMEMLIMIT 64MiB.
	conns, err := dialCrowd(fleet, agent)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	res, err := measureCrowd(agent, func() map[string]int { return concurrentDeliveries(conns) })
	if err != nil {
		return err
	}
	fmt.Printf("%d concurrent 8 MB deliveries: %s (goal: peak well under MemoryMax 256 MiB)\n", crowd, res)
	raw := make([]agentv1.AgentServiceClient, crowdConns)
	for i := range raw {
		api, conn, err := fleet.DialRaw(agent)
		if err != nil {
			return err
		}
		defer conn.Close()
		raw[i] = api
	}
	res, err = measureCrowd(agent, func() map[string]int { return stalledDeliveries(raw) })
	if err != nil {
		return err
	}
	fmt.Printf("%d stalled deliveries:          %s\n", crowd, res)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// localCopy is the baseline: read the file, write a copy, fsync it.
func localCopy(src, dst string) (time.Duration, error) {
	start := time.Now()
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Close(); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, os.Remove(dst)
}
