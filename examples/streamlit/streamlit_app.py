"""A minimal Streamlit app, no Procfile: the python buildpack infers
`streamlit run streamlit_app.py --server.port $PORT --server.address 0.0.0.0`.
"""

import streamlit as st

st.title("Hello from Streamlit on slugrunner!")
name = st.text_input("Your name", "world")
st.write(f"Hello, {name}!")
