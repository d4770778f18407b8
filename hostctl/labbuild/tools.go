//go:build tools

// Package labbuild pins the control-plane components the lab builds from
// source: kube-apiserver and kube-controller-manager from k8s.io/kubernetes,
// pilot-discovery (istiod), pilot-agent and istioctl from istio.io/istio. It is
// its own module so the product's go.mod never carries them; hostctl's lab
// provider runs `go build` in this directory (see pkg/labbuild).
package labbuild

import (
	_ "istio.io/istio/istioctl/cmd"
	_ "istio.io/istio/pilot/cmd/pilot-agent/app"
	_ "istio.io/istio/pilot/cmd/pilot-discovery/app"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
