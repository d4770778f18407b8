package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

const (
	crowd      = 200     // deliveries at once
	crowdFile  = 8 << 20 // bytes each
	crowdConns = 20      // connections they share, as 20 hostctl processes would
	stallWait  = 60 * time.Second
	retryPause = 20 * time.Millisecond
)

// The two allowlisted paths that take 8 MB.
var crowdPaths = []string{"/usr/local/bin/envoy", "/usr/local/bin/pilot-agent"}

// crowdResult is what one scenario measured.
type crowdResult struct {
	wall    time.Duration
	peakMiB float64
	outcome map[string]int
}

func (r crowdResult) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.outcome)) {
		parts = append(parts, fmt.Sprintf("%d %s", r.outcome[k], k))
	}
	return fmt.Sprintf("%6.1f s, agent peak RSS %6.1f MiB (%s)", r.wall.Seconds(), r.peakMiB, strings.Join(parts, ", "))
}

// measureCrowd runs scenario against agent with its peak RSS reset first.
func measureCrowd(agent *agentproc.Agent, scenario func() map[string]int) (crowdResult, error) {
	pid := agent.Cmd.Process.Pid
	if err := agentproc.ResetPeakRSS(pid); err != nil {
		return crowdResult{}, fmt.Errorf("reset peak RSS (needs Linux and root or the same user): %w", err)
	}
	start := time.Now()
	outcome := scenario()
	wall := time.Since(start)
	peak, err := agentproc.PeakRSSMiB(pid)
	return crowdResult{wall: wall, peakMiB: peak, outcome: outcome}, err
}

func dialCrowd(fleet *agentproc.Fleet, agent *agentproc.Agent) ([]*agentclient.Client, error) {
	conns := make([]*agentclient.Client, crowdConns)
	for i := range conns {
		c, err := fleet.Dial(agent)
		if err != nil {
			return nil, err
		}
		conns[i] = c
	}
	return conns, nil
}

// concurrentDeliveries sends crowd distinct 8 MB files at once; a delivery
// the agent turns away for now (RESOURCE_EXHAUSTED, ABORTED) is retried as a
// patient client would, so every one lands or fails for good.
func concurrentDeliveries(conns []*agentclient.Client) map[string]int {
	base := make([]byte, crowdFile)
	rand.Read(base)
	files := make([]agentclient.File, crowd)
	for i := range files {
		data := append([]byte(fmt.Sprintf("%08d", i)), base[8:]...)
		sum := sha256.Sum256(data)
		files[i] = agentclient.BytesFile(crowdPaths[i%len(crowdPaths)], data)
		files[i].SHA256, files[i].Size = hex.EncodeToString(sum[:]), int64(len(data))
	}
	var mu sync.Mutex
	outcome := map[string]int{}
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Go(func() {
			retries := 0
			for {
				_, err := conns[i%len(conns)].PutFile(context.Background(), f)
				code := status.Code(errors.Unwrap(err))
				if err != nil && (code == codes.ResourceExhausted || code == codes.Aborted) {
					retries++
					time.Sleep(retryPause + time.Duration(mrand.IntN(int(retryPause))))
					continue
				}
				mu.Lock()
				if err != nil {
					outcome["failed: "+code.String()]++
				} else {
					outcome["delivered"]++
				}
				outcome["retries"] += retries
				mu.Unlock()
				return
			}
		})
	}
	wg.Wait()
	return outcome
}

// stalledDeliveries opens crowd deliveries that send their header and 1 MiB
// and then nothing, and waits until the agent has answered each (refused or
// cancelled) or stallWait has passed.
func stalledDeliveries(conns []agentv1.AgentServiceClient) map[string]int {
	chunk := make([]byte, agentclient.ChunkSize)
	var mu sync.Mutex
	outcome := map[string]int{}
	var wg sync.WaitGroup
	for i := range crowd {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), stallWait)
			defer cancel()
			stream, err := conns[i%len(conns)].PutFile(ctx)
			if err == nil {
				fake, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
				sum := sha256.Sum256(fake.Bytes())
				stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Header{Header: &agentv1.FileHeader{
					Path: crowdPaths[i%len(crowdPaths)], Size: crowdFile, Sha256: hex.EncodeToString(sum[:])}}})
				stream.Send(&agentv1.PutFileRequest{Msg: &agentv1.PutFileRequest_Chunk{Chunk: chunk}})
				err = stream.RecvMsg(&agentv1.PutFileResponse{})
			}
			key := status.Code(err).String()
			if ctx.Err() != nil {
				key = fmt.Sprintf("still open after %s", stallWait)
			}
			mu.Lock()
			outcome[key]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return outcome
}
