mod basics;
mod compat;
mod corruption;
mod dma;
mod dump;
mod group_commit;
mod model;
mod util;
