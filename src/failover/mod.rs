//! Moving the application and its clients: the application's scripts (and,
//! later, the virtual address and the load balancer's health state).

pub mod checkers;
pub mod guard;
pub mod scripts;
