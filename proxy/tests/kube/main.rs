//! Kubernetes mode against a real control plane (`kube-testenv`: etcd and kube-apiserver):
//! the proxy in-process with `--kubernetes`, backends on pod-like addresses in a network
//! namespace of the test's own (the API refuses loopback endpoints), real TLS clients.
//!
//! Tests share one control plane. Each works in a namespace of its own and serves only its
//! own IngressClass, whose controller name is unique to the test, so the proxies of tests that
//! run at once never serve each other's Ingresses.

mod acme;
mod agent;
mod backend;
mod device;
mod harness;
mod ingress;
mod outage;
mod policy;
mod rbac;
mod replicas;
mod revocation;
mod secret;
mod tenant;
mod webhook;
